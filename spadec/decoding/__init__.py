"""Decoding methods on the target runtime (`spadec.runtime`): plain decoding
(`autoregressive`: `ar`, `dllm`), the generic speculative loop (`loop`) with its
plug-ins — drafters (`eagle2`), verification steps (`verify`, SpaDec's `spadec` with
`ats`), acceptance rules (`accept`) — and the method catalog (`catalog`), the one place a
method is declared. Loading the models a method needs and dispatching to it is
`spadec.eval.methods`."""
