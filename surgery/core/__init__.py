"""The graph core: Net, model I/O, the fx layer table, verification, errors, recipe replay.

Nothing here imports analyzers, surgeries or the zoo's families at module level; arrows point
one way: core -> analyzers -> surgeries -> cli_commands (the zoo sits on the core).
"""
