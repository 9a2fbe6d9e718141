"""Training CondInst: COCO data, augmentation, FCOS/CondInst targets and losses (and the loop).

    dataset = CocoInstances("annotations.json", "images/")          # training.data
    loader = build_train_loader(dataset, cfg, batch_size=2, seed=0)  # infinite, shuffled, grouped
    batch = next(iter(loader)).to(device)                            # training.transforms.TrainBatch
    losses = compute_losses(model, batch)                            # training.losses
    sum(losses.values()).backward()
"""
