"""charkit: consistent-character image generation with measured identity.

The package follows the data flow of the loop::

    dataset/ -> train/ -> render/ -> identity/ -> report/

with ``cli.py`` on top and the shared pieces (``errors``, ``paths``, ``images``,
``character``) beside them.
"""

__version__ = "0.1.0"
