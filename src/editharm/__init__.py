"""editharm: does editing facts into an LLM hurt its general abilities, and which regularizer prevents that?"""

__version__ = "0.1.0"
