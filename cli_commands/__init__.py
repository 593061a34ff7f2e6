"""The CLI's commands, one module per verb; ``cli.py`` imports them all onto ``base.app``."""
