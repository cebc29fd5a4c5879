"""The study: its models, the analyses registry, scores, one comparison, the summary, seed
baselines, linear probes, findings and figures."""
