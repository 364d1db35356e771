"""How a LazyConfig model is run: the execution strategies of ``fpn_plugin.accel``.

tools/lazyconfig_train_net.py applies ``accelerate(model, AccelOptions(**accel))`` after it
instantiates ``model`` (for training and for --eval-only), as tools/train_net.py applies
``MODEL.ACCEL`` to a YAML model. The strategies change how the model runs, never its parameters
or checkpoints.
"""

# AccelOptions fields, e.g. dict(channels_last=True) or dict(enabled=False); empty: AccelOptions()'s
# defaults, the bit-identical strategies on, those that change the last bits of the outputs off.
# From the command line: accel.enabled=False, accel.autocast_dtype=bfloat16, ...
accel = dict()
