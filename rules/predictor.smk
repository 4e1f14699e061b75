# SpaDec: predictor data (EAGLE-2 on the D-LLM over training prompts), the logistic
# predictor, and every decoding method side by side on held-out prompts.


rule predictor_data:
    input:
        cfg="results/{model}/config/predictor.data.json",
        decode="results/{model}/config/eagle.decode.json",
        dllm="results/{model}/dllm/hf",
        head="results/{model}/eagle/dllm/head",
        distill="results/{model}/eagle/dllm/distill",
    output:
        directory("results/{model}/predictor/data/shard_{shard}"),
    log:
        "logs/{model}/predictor_data_{shard}.log",
    benchmark:
        "logs/{model}/predictor_data_{shard}.benchmark.tsv"
    conda:
        "../environment.yml"
    threads: 4
    resources:
        gpu=stage_gpus("predictor"),
        mem_mb=32000,
        runtime=lambda wc, attempt: 240 * attempt,
    params:
        script=script("predictor_data"),
    shell:
        "$SPADEC_PY -m spadec.launch --gpus {resources.gpu} --"
        " {params.script} --config {input.cfg} --decode {input.decode} --dllm {input.dllm}"
        " --head {input.head} --distill {input.distill} --shard {wildcards.shard}"
        " --out {output} > {log} 2>&1"


rule train_predictor:
    input:
        cfg="results/{model}/config/predictor.train.json",
        shards=predictor_shards,
    output:
        directory("results/{model}/predictor/model"),
    log:
        "logs/{model}/train_predictor.log",
    benchmark:
        "logs/{model}/train_predictor.benchmark.tsv"
    conda:
        "../environment.yml"
    threads: 4
    resources:
        mem_mb=32000,
        runtime=60,
    params:
        script=script("train_predictor"),
    shell:
        "$SPADEC_PY {params.script} --config {input.cfg} --data {input.shards}"
        " --out {output} > {log} 2>&1"


rule eval_decoding:
    input:
        cfg="results/{model}/config/eagle.decode.json",
        ats="results/{model}/config/predictor.decode.json",
        base="results/{model}/base",
        dllm="results/{model}/dllm/hf",
        head_dense="results/{model}/eagle/dense/head",
        head_dllm="results/{model}/eagle/dllm/head",
        predictor="results/{model}/predictor/model",
        data="results/{model}/data",
    output:
        directory("results/{model}/decoding"),
    log:
        "logs/{model}/eval_decoding.log",
    benchmark:
        "logs/{model}/eval_decoding.benchmark.tsv"
    conda:
        "../environment.yml"
    threads: 8
    resources:
        gpu=stage_gpus("eval"),
        mem_mb=32000,
        runtime=180,
    params:
        script=script("eval_decoding"),
    shell:
        "$SPADEC_PY -m spadec.launch --gpus {resources.gpu} --"
        " {params.script} --config {input.cfg} --ats {input.ats} --base {input.base}"
        " --dllm {input.dllm} --head-dense {input.head_dense} --head-dllm {input.head_dllm}"
        " --predictor {input.predictor} --data {input.data} --out {output} > {log} 2>&1"
