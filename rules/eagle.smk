# EAGLE-2: self-distilled answers, sharded target features, DeepSpeed head training.
# {target} is `dense` (the base), `dllm` (SpaDec's D-LLM) or `dllm_baseline`.


rule distill:
    input:
        cfg="results/{model}/config/eagle.distill.json",
        target=target_dir,
        data="results/{model}/data",
    output:
        directory("results/{model}/eagle/{target}/distill"),
    log:
        "logs/{model}/distill_{target}.log",
    benchmark:
        "logs/{model}/distill_{target}.benchmark.tsv"
    conda:
        "../environment.yml"
    threads: 8
    resources:
        gpu=stage_gpus("eagle"),
        mem_mb=32000,
        runtime=lambda wc, attempt: 240 * attempt,
    params:
        script=script("distill"),
        ckpt="ckpt/{model}/eagle/{target}/distill",
    shell:
        "$SPADEC_PY -m spadec.launch --gpus {resources.gpu} --"
        " {params.script} --config {input.cfg} --target {input.target} --name {wildcards.target}"
        " --data {input.data} --ckpt {params.ckpt} --out {output} > {log} 2>&1"


rule eagle_data:
    input:
        cfg="results/{model}/config/eagle.data.json",
        target=target_dir,
        distill="results/{model}/eagle/{target}/distill",
    output:
        directory("results/{model}/eagle/{target}/data/shard_{shard}"),
    log:
        "logs/{model}/eagle_data_{target}_{shard}.log",
    benchmark:
        "logs/{model}/eagle_data_{target}_{shard}.benchmark.tsv"
    conda:
        "../environment.yml"
    threads: 4
    resources:
        gpu=stage_gpus("eagle"),
        mem_mb=32000,
        runtime=lambda wc, attempt: 120 * attempt,
    params:
        script=script("eagle_data"),
    shell:
        "$SPADEC_PY -m spadec.launch --gpus {resources.gpu} --"
        " {params.script} --config {input.cfg} --target {input.target} --name {wildcards.target}"
        " --distill {input.distill} --shard {wildcards.shard} --out {output} > {log} 2>&1"


rule train_eagle:
    input:
        cfg="results/{model}/config/eagle.train.json",
        target=target_dir,
        shards=eagle_shards,
    output:
        directory("results/{model}/eagle/{target}/head"),
    log:
        "logs/{model}/train_eagle_{target}.log",
    benchmark:
        "logs/{model}/train_eagle_{target}.benchmark.tsv"
    conda:
        "../environment.yml"
    threads: 8
    resources:
        gpu=lambda wc: stage_settings(wc.model, "eagle")["train_gpus"],
        mem_mb=64000,
        runtime=lambda wc, attempt: 600 * attempt,
    params:
        script=script("train_eagle"),
        ckpt="ckpt/{model}/eagle/{target}/head",
    shell:
        "$SPADEC_PY -m spadec.launch --gpus {resources.gpu} --backend deepspeed --"
        " {params.script} --config {input.cfg} --target {input.target} --data {input.shards}"
        " --ckpt {params.ckpt} --out {output} > {log} 2>&1"
