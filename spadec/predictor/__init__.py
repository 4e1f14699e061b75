"""SpaDec's acceptance predictor and acceptance-guided tree selection (ATS)."""
