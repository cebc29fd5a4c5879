# AutoAttack beside the evaluation PGD, on one fixed subset of the test split, per final model.


rule autoattack:
    input:
        weights=f"{MODEL_DIR}/model.safetensors",
        splits=splits_path("{dataset}"),
    output:
        f"{MODEL_DIR}/autoattack.json",
    log:
        f"{RESULTS}/logs/autoattack/{MODEL_ID}.log",
    threads: config["threads"]["train"]
    resources:
        mem_mb=autoattack_resource("mem_mb"),
        runtime=autoattack_resource("runtime"),
        gpu=GPU,
    params:
        evaluation=evaluation_attack(),
        version=AUTOATTACK["version"],
        batch_size=AUTOATTACK["batch_size"],
        n_examples=autoattack_examples,
        subset_seed=config["split_seed"],
    script:
        "../workflow_scripts/autoattack.py"
