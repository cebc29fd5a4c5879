# Data preparation, training and import: one job per dataset split, one job per model.


rule prepare_data:
    output:
        splits_path("{dataset}"),
    log:
        job_log("prepare_data", "{dataset}"),
    benchmark:
        job_benchmark("prepare_data", "{dataset}")
    conda:
        CONDA_ENV
    params:
        data_root=config["data_root"],
        options=lambda wc: dataset_options(
            wc.dataset, config["dataset_options"].get(wc.dataset)
        ),
        val_fraction=TRAINING["val_fraction"],
        split_seed=config["split_seed"],
    script:
        "../workflow_scripts/prepare_data.py"


rule train:
    input:
        splits=splits_path("{dataset}"),
    output:
        model=WILDCARD_MODEL.weights_path(RESULTS, "final"),
        best=WILDCARD_MODEL.weights_path(RESULTS, "best"),
        checkpoints=[
            WILDCARD_MODEL.weights_path(RESULTS, f"epoch{e}")
            for e in CHECKPOINT_EPOCHS
        ],
        metrics=f"{MODEL_DIR}/metrics.json",
    log:
        job_log("train", MODEL_ID),
    benchmark:
        job_benchmark("train", MODEL_ID)
    conda:
        CONDA_ENV
    threads: SIZER.threads("train")
    resources:
        mem_mb=resource("train", "mem_mb"),
        runtime=resource("train", "runtime"),
        gpu=SIZER.gpus("train"),
    params:
        settings=train_settings,
    script:
        "../workflow_scripts/train.py"


# An external model's "training" is its import (a changed checkpoint file reruns it and what
# follows). Its id is one wildcard constrained to the external models' ids; the ruleorder picks
# this rule for them, and `train` is the only rule for every other model.
ruleorder: import_model > train


rule import_model:
    input:
        checkpoint=lambda wc: EXTERNAL[wc.external]["checkpoint"],
        splits=lambda wc: splits_path(EXTERNAL[wc.external]["dataset"]),
    output:
        model=f"{RESULTS}/models/{{external}}/model.safetensors",
        metrics=f"{RESULTS}/models/{{external}}/metrics.json",
    log:
        job_log("import_model", "{external}"),
    benchmark:
        job_benchmark("import_model", "{external}")
    wildcard_constraints:
        external=EXTERNAL_PATTERN,
    conda:
        CONDA_ENV
    threads: SIZER.threads("import_model")
    resources:
        mem_mb=resource("import_model", "mem_mb"),
        runtime=resource("import_model", "runtime"),
        gpu=SIZER.gpus("import_model"),
    params:
        entry=lambda wc: EXTERNAL[wc.external],
        evaluation=lambda wc: EVALUATION_ATTACK[EXTERNAL[wc.external]["dataset"]],
        eval_batch_size=config["evaluation"]["batch_size"],
    script:
        "../workflow_scripts/import_model.py"
