"""``mtlkit study``: does multi-task learning help on my data, and which tasks belong together?

Light on import: the pieces (Optuna, matplotlib, torch) load with the work.
"""
