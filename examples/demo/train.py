"""A tiny CPU training job for the demo: trains a small classifier on data/blobs.csv.

-n scratch_mlp    an MLP from random initialisation (needs nothing but the data)
-n tv_resnet18    a linear head on torchvision's resnet18 (IMAGENET1K_V1 weights from torch hub)
-n timm_resnet18  a linear head on timm's resnet18.a1_in1k (weights from the Hugging Face Hub)
"""
import argparse
import csv
import sys
import time

import torch
from torch import nn


def load_data(path="data/blobs.csv"):
    with open(path, newline="") as f:
        rows = [list(map(float, r)) for r in csv.reader(f) if r and not r[0].startswith("#")]
    x = torch.tensor([r[:-1] for r in rows], dtype=torch.float32)
    y = torch.tensor([int(r[-1]) for r in rows])
    return x, y


def backbone(name):
    """A frozen pretrained feature extractor; images are made from the 2-d points by broadcasting."""
    if name == "tv_resnet18":
        import torchvision

        net = torchvision.models.resnet18(weights="IMAGENET1K_V1")
        net.fc = nn.Identity()
        dim = 512
    else:
        import timm

        net = timm.create_model("resnet18.a1_in1k", pretrained=True, num_classes=0)
        dim = net.num_features
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net, dim


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", "--model", required=True, choices=["scratch_mlp", "tv_resnet18", "timm_resnet18"])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    x, y = load_data()
    n_train = int(len(x) * 0.8)
    print(f"[demo] model={args.model} samples={len(x)} epochs={args.epochs} lr={args.lr:.6f}", flush=True)
    if args.model == "scratch_mlp":
        model = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 2))
        feats = x
    else:
        net, dim = backbone(args.model)
        with torch.no_grad():
            imgs = torch.cat([x, x[:, :1]], dim=1)[:, :, None, None].expand(-1, 3, 32, 32)  # N x 3 x 32 x 32
            feats = net(imgs)
        model = nn.Linear(dim, 2)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    t0 = time.time()
    for epoch in range(args.epochs):
        perm = torch.randperm(n_train)
        for i in range(0, n_train, args.batch_size):
            idx = perm[i:i + args.batch_size]
            opt.zero_grad()
            loss = loss_fn(model(feats[idx]), y[idx])
            loss.backward()
            opt.step()
        print(f"epoch {epoch + 1}/{args.epochs} loss {loss.item():.4f}", flush=True)
    with torch.no_grad():
        acc = (model(feats[n_train:]).argmax(1) == y[n_train:]).float().mean().item()
    print(f"Final loss: {loss.item():.6f}")
    print(f"Test Accuracy: {acc * 100:.2f}%")
    print(f"[demo] done in {time.time() - t0:.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
