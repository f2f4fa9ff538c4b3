"""Config overrides by dotted key, as `--config.a.b=value` gives them on the command line."""


def override(config, **overrides):
    """`config` with each `"a.b": value` of `overrides` set (the config is changed and returned)."""
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config
