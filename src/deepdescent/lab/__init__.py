"""The lab: problems on which the optimizers are raced. For now, the digits MLP race."""
