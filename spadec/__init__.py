"""SpaDec: speculative decoding with dynamic layer skipping, as a reproducible pipeline.

Importing the package is cheap on purpose (no torch import): the Snakefile imports
`spadec.config` at start-up, and every rule pays this import.
"""

__version__ = "0.1.0"
