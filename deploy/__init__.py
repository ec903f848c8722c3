"""Building and running the dyno's image with a container engine (`make image`, `make image-run`),
and the Kubernetes manifests for when an app outgrows Heroku (deploy/kubernetes/)."""
