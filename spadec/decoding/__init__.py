"""Decoding methods: autoregressive decoding (`ar`; the D-LLM's own loop lives in
`spadec.dllm.inference`), the generic speculative loop with an EAGLE-2 draft tree
(`eagle2`), SpaDec's verification step (`spadec`), the method catalog and the one
dispatch `methods.run_method`."""
