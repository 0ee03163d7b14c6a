"""slapos-collect: per-partition resource collector for SlapOS nodes.

This package is imported by the per-minute collector and by buildout, so it
must stay free of imports: each stage lives in its own module.
"""

__version__ = "0.1.0"
