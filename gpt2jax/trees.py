"""Names for the leaves of parameter and state pytrees, as the rule tables match them."""


def path_str(path) -> str:
    """'h/attn/qkv_kernel' for a jax key path (nnx Variable 'value' keys dropped)."""
    names = []
    for key in path:
        name = getattr(key, "key", getattr(key, "name", getattr(key, "idx", None)))
        if name != "value":
            names.append(str(name))
    return "/".join(names)
