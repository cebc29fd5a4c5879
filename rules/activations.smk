# Activation extraction: one Zarr store per model x checkpoint x input kind.


rule extract:
    input:
        weights=checkpoint_file,
        splits=splits_path("{dataset}"),
    output:
        directory(f"{RESULTS}/activations/{MODEL_ID}/{{checkpoint}}/{{inputs}}.zarr"),
    log:
        f"{RESULTS}/logs/extract/{MODEL_ID}/{{checkpoint}}/{{inputs}}.log",
    threads: config["threads"]["extract"]
    resources:
        mem_mb=extract_resource("mem_mb"),
        runtime=extract_resource("runtime"),
        gpu=GPU,
    params:
        layers=ACT["layers"],
        n_examples=ACT["n_examples"],
        subset_seed=config["split_seed"],
        dtype=ACT["dtype"],
        chunk_rows=CHUNK_ROWS,
        max_chunk_features=ACT.get("max_chunk_features"),
        pool=ACT.get("pool"),
        compressor=ACT["compressor"],
        batch_size=ACT["batch_size"],
        attack=evaluation_attack(),
        device=config["device"],
    script:
        "../workflow_scripts/extract.py"
