"""CLAP on a real federated runtime: a Flower App (SuperLink + one SuperNode per participant).

The core library ``clapjax`` never imports this package or ``flwr``. Modules:

* ``config``: the run configuration shared by the server and every participant.
* ``participant`` / ``coordinator``: the participant's and the server's logic
  (pure clapjax, no ``flwr``).
* ``codec`` / ``wire``: what crosses the wire, encoding and logging (``flwr``).
* ``client_app`` / ``server_app``: the Flower ClientApp and ServerApp (``flwr``).
* ``launch``: a loopback deployment (SuperLink + K SuperNodes) as processes.
* ``inprocess``: the same configuration on the in-process engine, for comparison.

Nothing is imported eagerly, so ``clapjax_flower.launch`` works without JAX.
"""

__all__ = ["client_app", "codec", "config", "coordinator", "inprocess", "launch", "participant", "server_app", "wire"]
