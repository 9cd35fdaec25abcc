"""Run fedalign on Flower's Deployment Runtime (SuperLink, SuperNodes, SuperExecs).

`fedalign.deploy.localhost` starts the same topology as `docker/compose.yml`
as plain processes on one machine, submits a run with `flwr run` and stops
every process it started; CI uses it because the docker engine is not
available there. See docs/deployment.md.
"""
