"""robrep: how do adversarially robust representations differ from standard ones?

A library that knows nothing of Snakemake: data, models, attacks, training, activation_store,
similarity, analyses, figures. The workflow's rule scripts are thin wrappers around it.
"""

__version__ = "0.1.0"
