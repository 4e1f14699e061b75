"""SpaDec: speculative decoding with dynamic layer skipping, as a reproducible pipeline.

Importing the package is cheap on purpose (no torch import): the Snakefile imports
`spadec.config` at start-up, and every rule pays this import. The D-LLM model types are
registered with transformers' Auto classes when transformers gets imported, so
`import spadec` then `AutoModelForCausalLM.from_pretrained(dllm_dir)` works.
"""

from spadec._autoregister import install as _install_autoregister

__version__ = "0.1.0"

_install_autoregister()
