"""charkit: consistent-character image generation with measured identity.

The package follows the data flow of the loop. Stages::

    dataset/ -> train/ -> render/ -> verify/

stand on engines (``families/``, ``identity/``, ``look/``) and shared pieces (``images``, ``paths``,
``devices``, ``distributed``, ``stagefiles``, ``report/``, ``character``), with ``cli.py`` on top.
An engine never imports a stage; the library never imports the CLI.
"""

__version__ = "0.1.0"
