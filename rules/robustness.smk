# The evaluation attack's adversarial examples as data, and AutoAttack beside the evaluation PGD.


rule attack:
    input:
        weights=checkpoint_file,
        splits=splits_path("{dataset}"),
    output:
        directory(adversarial_path(RESULTS, WILDCARD_MODEL, "{checkpoint}")),
    log:
        job_log("attack", f"{MODEL_ID}/{{checkpoint}}"),
    benchmark:
        job_benchmark("attack", f"{MODEL_ID}/{{checkpoint}}")
    conda:
        CONDA_ENV
    threads: SIZER.threads("attack")
    resources:
        mem_mb=resource("attack", "mem_mb"),
        runtime=resource("attack", "runtime"),
        disk_mb=resource("attack", "disk_mb"),
        gpu=SIZER.gpus("attack"),
    params:
        attack=lambda wc: EVALUATION_ATTACK[wc.dataset],
        n_examples=lambda wc: EXAMPLES[wc.dataset],
        subset_seed=config["split_seed"],
        batch_size=ATTACK_BATCH,
    script:
        "../workflow_scripts/attack.py"


# AutoAttack on one fixed subset of the test split, per final model.


rule autoattack:
    input:
        weights=WILDCARD_MODEL.weights_path(RESULTS),
        splits=splits_path("{dataset}"),
    output:
        f"{MODEL_DIR}/autoattack.json",
    log:
        job_log("autoattack", MODEL_ID),
    benchmark:
        job_benchmark("autoattack", MODEL_ID)
    conda:
        CONDA_ENV
    threads: SIZER.threads("autoattack")
    resources:
        mem_mb=resource("autoattack", "mem_mb"),
        runtime=resource("autoattack", "runtime"),
        gpu=SIZER.gpus("autoattack"),
    params:
        evaluation=lambda wc: EVALUATION_ATTACK[wc.dataset],
        version=AUTOATTACK["version"],
        batch_size=AUTOATTACK["batch_size"],
        n_examples=lambda wc: SIZER.autoattack_examples(wc.dataset),
        subset_seed=config["split_seed"],
    script:
        "../workflow_scripts/evaluate_autoattack.py"
