"""robrep: how do adversarially robust representations differ from standard ones?

A library that knows nothing of Snakemake, by stage; imports run downwards only
(tests/test_structure.py holds them to it):

    pipeline/    config, job sizing, cluster, verify, CLI
    study/       the study, analyses, scores, comparison, summary, probes, findings, figures
    store/       extraction into activation stores, reading them
    learn/       data, models, attacks, training, adversarial examples, AutoAttack, imports
    similarity/  the Gram statistic, minibatch CKA and its views, full-data metrics
    io/          atomic writes, checksums, xarray/zarr I/O, safetensors weights
    ids, runtime, workers

The workflow's rule scripts are thin wrappers around it.
"""

__version__ = "0.1.0"
