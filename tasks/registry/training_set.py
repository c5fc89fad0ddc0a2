"""Write the training set: texts are joined back to ids here, at the edge, in the layout the user chose.

The rows are the ids table's (tasks/mining/ids_table.py), one per (query, positive). Beside the training config,
always, the `ids` config names every row's query, positive and negatives by id with their scores.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from negforge.schemas.config import InputConfig, OutputConfig
from negforge.schemas.stages import WrittenSet
from negforge.schemas.tables import shard_rows
from negforge.tasks.ingest.readers import Field, input_files, read_input


def joined_texts(ids: pl.DataFrame, positives: pl.DataFrame, query_shards: list[str],
                 corpus_shards: list[str]) -> pl.DataFrame:
    """The ids table with texts joined back: anchor, positive and the list of negative texts."""
    keyed = ids.join(positives.select("query_id", "positive_id", "query_row", "doc_row"),
                     on=["query_id", "positive_id"], how="left", maintain_order="left")
    queries = shard_rows(query_shards, keyed["query_row"]).select(pl.col("row").alias("query_row"),
                                                                pl.col("text").alias("anchor"))
    docs = shard_rows(corpus_shards, keyed["doc_row"]).select(pl.col("row").alias("doc_row"),
                                                          pl.col("text").alias("positive"))
    negative_ids = ids["negative_ids"].explode().drop_nulls().unique()
    id_text = dict(pl.scan_parquet(corpus_shards).select("id", "text")
                   .filter(pl.col("id").is_in(negative_ids)).collect().iter_rows())
    return (keyed.join(queries, on="query_row", how="left", maintain_order="left")
            .join(docs, on="doc_row", how="left", maintain_order="left")
            .with_columns(pl.col("negative_ids").list.eval(pl.element().replace_strict(id_text, default=None))
                          .alias("negatives")))


def _score_columns(base: pl.DataFrame, cfg: OutputConfig) -> list[tuple[str, str, str]]:
    """(output name, positive column, negatives column) of each score the output carries: the embedding's, then
    the rescorer's and BM25's when the ids have them."""
    if not cfg.scores:
        return []
    kinds = [("score", "positive_score", "negative_scores"), ("rescore", "positive_rescore", "negative_rescores"),
             ("bm25", "positive_bm25", "negative_bm25s")]
    return [kind for kind in kinds if kind[1] in base.columns]


def training_rows(base: pl.DataFrame, cfg: OutputConfig, n: int) -> pl.DataFrame:
    """The training config's rows in `cfg.format`, with scores (`scores`, and `rescores` from a rescorer) when
    `cfg.scores`: the positive's first, then the negatives'."""
    kinds = _score_columns(base, cfg)
    score_lists = [pl.concat_list(pl.col(pos), pl.col(neg)).alias(f"{name}s") for name, pos, neg in kinds]
    if cfg.format == "n-tuple":
        columns = [pl.col("anchor"), pl.col("positive"),
                   *[pl.col("negatives").list.get(i).alias(f"negative_{i + 1}") for i in range(n)]]
        return base.select(*columns, *score_lists)
    if cfg.format == "triplet":
        exploded = base.explode(["negatives", *[neg for _, _, neg in kinds]])
        return exploded.select("anchor", "positive", pl.col("negatives").alias("negative"), *score_lists)
    if cfg.format == "labeled-list":
        documents = pl.concat_list(pl.col("positive"), pl.col("negatives")).alias("positive")
        labels = pl.concat_list(pl.lit(1), pl.col("negatives").list.eval(pl.lit(0))).alias("labels")
        return base.select("anchor", documents, *(score_lists or [labels]))
    return _labeled_pairs(base, kinds)


def _labeled_pairs(base: pl.DataFrame, kinds: list[tuple[str, str, str]]) -> pl.DataFrame:
    """Per query: each positive (label 1), then the query's negatives once (label 0), as the reference does."""
    values = [name for name, _, _ in kinds] or ["label"]
    pos = base.select("query_row", "anchor", "positive", *[pl.col(p).alias(name) for name, p, _ in kinds],
                      pl.lit(1).alias("label"), pl.lit(0).alias("part"), pl.int_range(pl.len()).alias("order"))
    neg = (base.unique("query_row", keep="first", maintain_order=True)
           .select("query_row", "anchor", pl.col("negatives").alias("positive"),
                   *[pl.col(n).alias(name) for name, _, n in kinds])
           .explode(["positive", *[name for name, _, _ in kinds]]).drop_nulls("positive")
           .with_columns(pl.lit(0).alias("label"), pl.lit(1).alias("part"), pl.int_range(pl.len()).alias("order")))
    first = base.select("query_row").with_row_index("query_order").unique("query_row", keep="first")
    both = pl.concat([pos, neg], how="vertical_relaxed").join(first, on="query_row")
    return both.sort(["query_order", "part", "order"]).select("anchor", "positive", *values)


def write_parquet_files(df: pl.DataFrame, folder: Path, rows_per_file: int) -> list[str]:
    """Write `train-0000i-of-0000N.parquet` files, the split layout `datasets` expects."""
    folder.mkdir(parents=True, exist_ok=True)
    count = max(1, -(-df.height // rows_per_file))
    names = []
    for i in range(count):
        name = f"train-{i:05d}-of-{count:05d}.parquet"
        df.slice(i * rows_per_file, rows_per_file).write_parquet(folder / name)
        names.append(name)
    return names


def write_flagembedding(base: pl.DataFrame, path: Path, with_scores: bool) -> int:
    """FlagEmbedding's `hn_mine.py` jsonl: one line per query with all its positives and its negatives.

    Its `pos_scores`/`neg_scores` are the teacher scores FlagEmbedding distils from: the rescorer's when one is set.
    """
    prefix = "rescore" if "positive_rescore" in base.columns else "score"
    grouped = (base.group_by("query_row", maintain_order=True)
               .agg(pl.col("anchor").first().alias("query"), pl.col("positive").alias("pos"),
                    pl.col(f"positive_{prefix}").alias("pos_scores"), pl.col("negatives").first().alias("neg"),
                    pl.col(f"negative_{prefix}s").first().alias("neg_scores")))
    columns = ["query", "pos", "neg"] + (["pos_scores", "neg_scores"] if with_scores else [])
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in grouped.select(columns).iter_rows(named=True):
            handle.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
    return grouped.height


def _title_and_text(ids: pl.Series, texts: pl.DataFrame, source: InputConfig) -> pl.DataFrame:
    """(id, title, text) of documents: from the corpus file's own title and text columns when the input has a corpus
    with titles (streamed, keeping only the wanted ids), else an empty title and the document's text."""
    wanted = ids.unique()
    if not (source.corpus and source.doc_title_field and source.pairs is None):
        return texts.filter(pl.col("id").is_in(wanted.implode())).select("id", pl.lit("").alias("title"), "text")
    fields = {"id": Field(source.doc_id_field), "title": Field(source.doc_title_field, required=False),
              "text": Field(source.doc_text_field)}
    found = [batch.rows.filter(pl.col("id").is_in(wanted.implode())).select("id", "title", "text")
             for batch in read_input(input_files(source.corpus, source.format), fields)]
    return pl.concat(found).unique("id", keep="first").with_columns(pl.col("title").fill_null(""))


def write_tevatron(ids: pl.DataFrame, base: pl.DataFrame, corpus_shards: list[str], source: InputConfig,
                   path: Path) -> int:
    """Tevatron's training jsonl: per query, query_id, query, positive_passages and negative_passages, each passage
    {docid, title, text}. With input.pairs the ids are negforge's (made from the text hash) and titles are empty."""
    doc_ids = pl.concat([ids["positive_id"], ids["negative_ids"].explode().drop_nulls()])
    shard_texts = pl.scan_parquet(corpus_shards).select("id", "text").filter(pl.col("id").is_in(doc_ids.unique())).collect()
    passages = {docid: {"docid": docid, "title": title, "text": text}
                for docid, title, text in _title_and_text(doc_ids, shard_texts, source).iter_rows()}
    grouped = (base.group_by("query_id", maintain_order=True)
               .agg(pl.col("anchor").first().alias("query"), pl.col("positive_id").alias("positives"),
                    pl.col("negative_ids").first().alias("negatives")))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for query_id, query, positive_ids, negative_ids in grouped.iter_rows():
            row = {"query_id": query_id, "query": query,
                   "positive_passages": [passages[d] for d in positive_ids],
                   "negative_passages": [passages[d] for d in negative_ids]}
            handle.write(json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n")
    return grouped.height


def write_training_set(ids: pl.DataFrame, positives: pl.DataFrame, query_shards: list[str],
                       corpus_shards: list[str], cfg: OutputConfig, num_negatives: int,
                       out_dir: str | Path, source: InputConfig | None = None) -> WrittenSet:
    """Write `data/`, `ids/` and the configured exports under `out_dir` (`source`, the input section, gives the
    Tevatron export its titles)."""
    out = Path(out_dir)
    base = joined_texts(ids, positives, query_shards, corpus_shards)
    training = training_rows(base, cfg, num_negatives)
    files = {"data": write_parquet_files(training, out / "data", cfg.rows_per_file),
             "ids": write_parquet_files(ids, out / "ids", cfg.rows_per_file)}
    if "flagembedding" in cfg.exports:
        write_flagembedding(base, out / "exports" / "flagembedding.jsonl", cfg.scores)
        files["exports"] = ["flagembedding.jsonl"]
    if "tevatron" in cfg.exports:
        write_tevatron(ids, base, corpus_shards, source or InputConfig(pairs=[]), out / "exports" / "tevatron.jsonl")
        files["exports"] = [*files.get("exports", []), "tevatron.jsonl"]
    sizes = {config: sum((out / config / name).stat().st_size for name in files[config]) for config in ("data", "ids")}
    return WrittenSet(rows=training.height, id_rows=ids.height, files=files, bytes=sizes)
