"""Calibration (`mine.strategy: auto`): the settings measured on the user's own known positives, hidden in
turn, and the rule that chooses among them.

May import: schemas, tasks.gate, tasks.mining, tasks.search.
"""
