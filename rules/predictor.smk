# SpaDec's predictors, one per drafter kind (`{predictor}`: `predictor` learns EAGLE-2
# trees, `predictor_medusa` Medusa's): data (the drafter on the D-LLM over training
# prompts, layer-K states of every tree node, accepted or not) and the logistic predictor.


wildcard_constraints:
    predictor="|".join(predictor_keys()),


rule predictor_data:
    input:
        unpack(predictor_data_inputs),
        cfg="results/{model}/config/predictor.data.json",
        decode="results/{model}/config/eagle.decode.json",
        dllm="results/{model}/dllm/hf",
        distill="results/{model}/eagle/dllm/distill",
    output:
        directory("results/{model}/{predictor}/data/shard_{shard}"),
    log:
        "logs/{model}/{predictor}_data_{shard}.log",
    benchmark:
        "logs/{model}/{predictor}_data_{shard}.benchmark.tsv"
    conda:
        "../environment.yml"
    threads: 4
    resources:
        gpu=stage_gpus("predictor"),
        mem_mb=32000,
        runtime=lambda wc, attempt: 240 * attempt,
    params:
        script=script("predictor_data"),
        drafter=predictor_drafter,
        medusa=medusa_option,
    shell:
        "$SPADEC_PY -m spadec.launch --gpus {resources.gpu} --"
        " {params.script} --config {input.cfg} --decode {input.decode} --dllm {input.dllm}"
        " --drafter {params.drafter} {params.medusa}"
        " --head {input.head} --distill {input.distill} --shard {wildcards.shard}"
        " --out {output} > {log} 2>&1"


rule train_predictor:
    input:
        cfg="results/{model}/config/predictor.train.json",
        shards=predictor_shards,
    output:
        directory("results/{model}/{predictor}/model"),
    log:
        "logs/{model}/train_{predictor}.log",
    benchmark:
        "logs/{model}/train_{predictor}.benchmark.tsv"
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
