# stage_config: each stage's resolved settings as a JSON file its rule reads.


rule stage_config:
    """Write one stage's resolved settings; a changed knob reruns exactly that stage."""
    output:
        "results/{model}/config/{stage}.json",
    log:
        "logs/{model}/stage_config_{stage}.log",
    localrule: True
    params:
        settings=lambda wc: stage_settings(wc.model, wc.stage),
    run:
        write_json(output[0], params.settings)
