"""Data-parallel serving on Ray Serve (``serve.backend=ray``): N engine replicas behind the one app.

The ingress is this process's own uvicorn + Litestar app (engine/server) with a weightless view of the
model (frontend_model.py) and, in place of the local AsyncEngine, a client that forwards each request
to one replica (engine_client.py), chosen by load and prompt-prefix affinity (router.py). Each replica
is a Ray Serve application of one deployment (replica.py), so Ray Serve replaces a replica that dies;
replica_set.py tracks which are up. cluster.py starts or joins the Ray cluster and deploys them;
ingress.py puts it all together for the serve task. docs/SCALE_OUT.md tells the story.

Only cluster.py, engine_client.py and replica_set.py import Ray, and nothing outside this package
imports them but lazily, once serve.backend=ray is chosen (tests/test_import_structure.py).
"""
