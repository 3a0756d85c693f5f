"""`python -m pipeline.models`: every name model.arch accepts, with its input rule."""

from pipeline.models import architectures, input_rule

for name in architectures():
    rule = input_rule(name)
    extra = f", a multiple of {rule.multiple}" if rule.multiple > 1 else ""
    fixed = ", one size for train and val" if rule.fixed else ""
    print(f"{name:24s} at least {rule.minimum} px{extra}{fixed}")
