# robrep: how do adversarially robust representations differ from standard ones?
# dataset x architecture x method/eps x seed -> models -> activation stores -> similarity -> summary


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/train.smk"
include: "rules/activations.smk"
include: "rules/similarity.smk"
include: "rules/aggregate.smk"


rule all:
    input:
        all_targets(),
    default_target: True
