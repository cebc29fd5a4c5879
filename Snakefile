# robrep: how do adversarially robust representations differ from standard ones?
# dataset x architecture x method/eps x seed -> models -> activation stores -> similarity -> summary
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"


wildcard_constraints:
    dataset=ID,
    arch=ID,
    method_id=ID,
    seed=r"\d+",
    checkpoint=CHECKPOINT_PATTERN,
    inputs=INPUTS_PATTERN,
    analysis="|".join(ANALYSES),
    pair=ID,


include: "rules/train.smk"
include: "rules/robustness.smk"
include: "rules/activations.smk"
include: "rules/similarity.smk"
include: "rules/probes.smk"
include: "rules/aggregate.smk"


rule all:
    default_target: True
    input:
        all_targets(),
