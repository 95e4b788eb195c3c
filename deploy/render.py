#!/usr/bin/env python3
"""Render deploy/ into the one file users apply, as Kourier ships kourier.yaml.

    python3 deploy/render.py --image ghcr.io/you/knative-gateway@sha256:... > knative-gateway.yaml
    kubectl apply -f knative-gateway.yaml

It does what `kubectl apply -k deploy/base` would do with the base's
kustomization (its resources, namespace, image and labels), for the image
given (by digest where you have one) and the namespace given, and adds the
trust bundle's Role in Knative's namespace (deploy/knative/trust-bundle-rbac.yaml).
Needs only PyYAML (installed with kubernetes-validate by ./dev.sh test).
"""

import argparse
import copy
import pathlib
import re
import sys

import yaml

HERE = pathlib.Path(__file__).resolve().parent
# Kinds without a namespace among those deploy/ holds.
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}


def version():
    """The gateway's version, from the workspace's Cargo.toml."""
    text = (HERE.parent / "Cargo.toml").read_text()
    found = re.search(r'^\[workspace\.package\][^\[]*?^version = "([^"]+)"', text, re.M | re.S)
    if not found:
        sys.exit("render: no workspace version in Cargo.toml")
    return found.group(1)


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def render(image, namespace, system_namespace):
    base = HERE / "base"
    kustomization = load(base / "kustomization.yaml")[0]
    old_namespace = kustomization["namespace"]
    images = {i["name"] for i in kustomization.get("images", [])}
    labels = {}
    for group in kustomization.get("labels", []):
        labels.update(group["pairs"])
    labels["app.kubernetes.io/version"] = version()
    objects = [o for r in kustomization["resources"] for o in load(base / r)]
    objects += load(HERE / "knative" / "trust-bundle-rbac.yaml")
    out = []
    for obj in objects:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        kind = obj["kind"]
        if kind == "Namespace":
            meta["name"] = namespace
        elif kind not in CLUSTER_SCOPED:
            # The trust bundle's Role stays in Knative's namespace.
            if meta.get("namespace") != "knative-serving":
                meta["namespace"] = namespace
            else:
                meta["namespace"] = system_namespace
        for subject in obj.get("subjects", []):
            if subject.get("kind") == "ServiceAccount" and subject.get("namespace") == old_namespace:
                subject["namespace"] = namespace
        meta.setdefault("labels", {}).update(labels)
        containers = obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])
        for c in containers:
            if c.get("image") in images:
                c["image"] = image
        out.append(obj)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True,
                        help="the gateway image, e.g. registry/knative-gateway@sha256:... (a digest pins it)")
    parser.add_argument("--namespace", default="knative-gateway",
                        help="where the gateway runs (default knative-gateway)")
    parser.add_argument("--system-namespace", default="knative-serving",
                        help="Knative's namespace, where the trust bundle is read (default knative-serving)")
    args = parser.parse_args()
    if "@" not in args.image and ":" not in args.image.rsplit("/", 1)[-1]:
        sys.exit(f"render: --image {args.image!r} names no tag or digest")
    objects = render(args.image, args.namespace, args.system_namespace)
    sys.stdout.write(f"# knative-gateway {version()}: rendered from deploy/ by deploy/render.py\n")
    sys.stdout.write(yaml.safe_dump_all(objects, sort_keys=False, explicit_start=True))


if __name__ == "__main__":
    main()
