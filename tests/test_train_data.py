"""Dataset control and loss parity: epochs/repeats, regularisation images, step bounds, checkpoint retention, SDXL's
original size from prep's records, SD3's preconditioned loss, no LR step on skipped updates, the optimizers.

Tiny real pipelines and real photos (tests/data/faces); every number a loss returns comes from the family's own
training_loss.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_train import FACES, SIZE, make_character, tiny_preset, write_dataset

from charkit.errors import CharkitError
from charkit.families import family_part, get_family
from charkit.testing.stagefiles import write_dataset_file
from charkit.train import checkpoints as ckpt
from charkit.train.config import parse_preset
from charkit.train.data import (
    TrainBatch,
    TrainDataset,
    TrainItem,
    epoch_batches,
    load_dataset,
    make_batch,
    step_generator,
)
from charkit.train.optim import check_optimizer, make_optimizer


def dataset(sizes: list[tuple[int, int]], reg: int = 0) -> TrainDataset:
    items = [TrainItem(Path(f"{i}.png"), "ohwx man", w, h) for i, (w, h) in enumerate(sizes)]
    items += [
        TrainItem(Path(f"r{i}.png"), "man", sizes[i % len(sizes)][0], sizes[i % len(sizes)][1], reg=True)
        for i in range(reg)
    ]
    return TrainDataset(Path("."), "alice", "sd15", 64, items)


@pytest.mark.parametrize("repeats, reg, batch", [(1, 0, 2), (3, 0, 2), (2, 2, 3)])
def test_an_epoch_sees_every_image_repeats_times(repeats, reg, batch):
    ds = dataset([(64, 64)] * 3 + [(48, 80)] * 2, reg=reg)
    batches = epoch_batches(ds, batch, seed=7, epoch=0, repeats=repeats)
    flat = [i for b in batches for i in b]
    for i in ds.train_items:
        assert flat.count(i) == repeats
    assert sum(flat.count(i) for i in ds.reg_items) == (len(ds.train_items) * repeats if reg else 0)
    for b in batches:  # one bucket per batch, never more than the batch size
        assert len({(ds.items[i].width, ds.items[i].height) for i in b}) == 1 and 1 <= len(b) <= batch
    assert epoch_batches(ds, batch, seed=7, epoch=0, repeats=repeats) == batches  # a pure function (resume)
    assert epoch_batches(ds, batch, seed=7, epoch=1, repeats=repeats) != batches


@pytest.fixture
def character(tmp_path) -> Path:
    d = make_character(tmp_path / "characters")
    write_dataset(d)
    reg = d / "reg"
    reg.mkdir()
    shutil.copy(FACES / "biden.jpg", reg / "biden.jpg")  # another man of the class
    (reg / "biden.txt").write_text("a photo of a man in a suit\n")
    with Image.open(FACES / "obama3.jpg") as im:  # a class photo without a caption file: the class word
        im.convert("RGB").resize((80, 120)).save(reg / "other.png")
    return d


def test_epochs_regularisation_and_weights(tiny_models, character):
    """train.epochs sets the steps; reg images join the dataset (captions from .txt or the class word) and their
    samples weigh prior_loss_weight: the loss is linear in the per-sample weights."""
    from charkit.train import loop

    preset = tiny_preset("sd15", train={"epochs": 3, "repeats": 1, "reg_images": "reg", "prior_loss_weight": 0.5})
    plan = loop.check_inputs(character, model=tiny_models("sd15").root, preset=preset, device="cpu")
    ds = plan.dataset
    assert len(ds.train_items) == 3 and len(ds.reg_items) == 2
    captions = {ds.items[i].path.name: ds.items[i].caption for i in ds.reg_items}
    assert captions == {"biden.jpg": "a photo of a man in a suit", "other.png": "man"}
    assert all((ds.items[i].width, ds.items[i].height) == (SIZE, SIZE) for i in ds.reg_items)  # nearest bucket
    # 3 training + 3 regularisation samples per epoch in batches of 2: 3 batches, 3 epochs -> 9 steps.
    assert plan.preset.train.steps == 9 and any("train.epochs=3: 9 steps" in n for n in plan.notes)

    session = loop.load(plan)
    loop.cache(session)
    fam = session.family

    def loss(indices, weight):
        b = make_batch(
            ds,
            session.latents,
            session.texts,
            indices=indices,
            caption_dropout=0.0,
            generator=step_generator(0, 0, 1),
            prior_loss_weight=weight,
        )
        with torch.no_grad():
            return float(
                fam.training_loss(
                    session.pipe,
                    session.denoiser,
                    session.noise_scheduler,
                    b,
                    loss_cfg=plan.preset.loss,
                    generator=step_generator(0, 0, 2),
                )
            )

    reg = ds.reg_items[0]
    full, none, half = loss([0, reg], 1.0), loss([0, reg], 0.0), loss([0, reg], 0.5)
    assert half == pytest.approx((full + none) / 2, rel=1e-5) and none < full
    b = make_batch(
        ds,
        session.latents,
        session.texts,
        indices=[0, reg],
        caption_dropout=0.0,
        generator=step_generator(0, 0, 1),
        prior_loss_weight=0.5,
    )
    assert b.weights.tolist() == [1.0, 0.5] and b.captions[1] == ds.items[reg].caption

    # fp16 loss scaling that skips an update skips the learning-rate step too.
    before = session.lr_scheduler.last_epoch
    opt_type = type(session.optimizer)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(opt_type, "step_was_skipped", property(lambda self: True))
        loop.train_step(session)
    assert session.lr_scheduler.last_epoch == before and session.skipped_updates == 1
    loop.train_step(session)
    assert session.lr_scheduler.last_epoch == before + 1


@pytest.mark.parametrize(
    "changes, needle",
    [
        ({"train": {"steps": 500}, "eval": {"every": 1}}, "saves 500 checkpoints, more than checkpoints.max_count=100"),
        ({"train": {"reg_images": "missing"}}, "train.reg_images"),
    ],
)
def test_runaway_runs_are_refused_before_loading(changes, needle, tiny_models, character):
    from charkit.train import loop

    with pytest.raises(CharkitError, match=needle) as e:
        loop.check_inputs(
            character, model=tiny_models("sd15").root, preset=tiny_preset("sd15", **changes), device="cpu"
        )
    assert "\n" not in str(e.value)
    with pytest.raises(CharkitError, match="train.steps"):
        parse_preset({"family": "sd15", "train": {"steps": 150_000}})


def test_checkpoint_retention_keeps_the_newest_and_the_best(tiny_models, character, tmp_path):
    from charkit.train.loop import train_lora

    preset = tiny_preset("sd15", train={"steps": 3}, eval={"every": 1}, checkpoints={"keep": 1})
    r = train_lora(
        character,
        model=tiny_models("sd15").root,
        preset=preset,
        device="cpu",
        out=tmp_path / "run",
        progress=False,
        register=False,
    )
    assert [c.step for c in ckpt.list_checkpoints(tmp_path / "run")] == [3]  # unmeasured: the best is the last
    assert [s.step for s in r.scores] == [1, 2, 3] and r.best.is_file()
    report = json.loads(r.report_json.read_text())
    assert [c["step"] for c in report["checkpoints"]] == [1, 2, 3] and report["baseline"]["step"] == 0


# ----------------------------------------------------------------------------------------- loss parity


def test_sdxl_original_size_comes_from_the_prep_record(tmp_path):
    """An upscaled crop (prep's scale > 1) says it came from fewer pixels: original = crop_box size in the source."""
    d = make_character(tmp_path / "characters")
    ds = write_dataset(d)
    meta = json.loads((ds / "dataset.json").read_text())
    items = meta["items"]
    items[0].update(crop_box=[10.0, 20.0, 42.0, 60.0], scale=2.0)  # 32 x 40 source pixels made 64 x 64
    write_dataset_file(ds, items, character="alice", family="sdxl", resolution=SIZE)
    data = load_dataset(d, family="sdxl")
    assert data.items[0].original == (40, 32) and data.items[1].original == (SIZE, SIZE)

    pipe = get_family("sdxl").tiny_pipeline(0)
    fam = family_part("sdxl", "lora")
    text = fam.encode_text(pipe, ["ohwx man"], device="cpu")
    lat = torch.randn(1, 4, SIZE // 2, SIZE // 2, generator=torch.Generator().manual_seed(0))
    sched = fam.noise_scheduler(pipe)
    cfg = parse_preset({"family": "sdxl"}).loss

    def loss(originals):
        b = TrainBatch(lat, text, [(SIZE, SIZE)], [(0, 0)], ["ohwx man"], [0], originals=originals)
        with torch.no_grad():
            return float(
                fam.training_loss(pipe, pipe.unet, sched, b, loss_cfg=cfg, generator=torch.Generator().manual_seed(1))
            )

    assert loss([(40, 32)]) != loss([(SIZE, SIZE)]) and loss(None) == loss([(SIZE, SIZE)])


def test_sd3_preconditioned_loss_is_sigma_squared_velocity_loss():
    """diffusers' --precondition_outputs: x0 = x_t - sigma v against x_0, i.e. sigma^2 times the velocity loss."""
    pipe = get_family("sd3").tiny_pipeline(0)
    fam = family_part("sd3", "lora")
    text = fam.encode_text(pipe, ["ohwx man"], device="cpu")
    lat = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    sched = fam.noise_scheduler(pipe)
    batch = TrainBatch(lat, text, [(32, 32)], [(0, 0)], ["ohwx man"], [0])

    def loss(pre):
        cfg = parse_preset({"family": "sd3", "loss": {"precondition_outputs": pre}}).loss
        with torch.no_grad():
            return float(
                fam.training_loss(
                    pipe, pipe.transformer, sched, batch, loss_cfg=cfg, generator=torch.Generator().manual_seed(1)
                )
            )

    g = torch.Generator().manual_seed(1)
    torch.randn(lat.shape, generator=g)  # the noise, drawn first
    _, sigmas = fam.sample_sigmas(sched, 1, loss_cfg=parse_preset({"family": "sd3"}).loss, generator=g, device="cpu")
    assert loss(True) == pytest.approx(float(sigmas[0]) ** 2 * loss(False), rel=1e-4)
    assert loss(None) == loss(True)  # the family default is on
    assert parse_preset({"family": "sd3"}).precondition and not parse_preset({"family": "flux"}).precondition
    with pytest.raises(CharkitError, match="precondition_outputs applies to sd3 only"):
        parse_preset({"family": "flux", "loss": {"precondition_outputs": True}})


# -------------------------------------------------------------------------------------------- optimizers


@pytest.mark.parametrize("name", ["adamw", "adamw8bit", "prodigy", "adafactor"])
def test_optimizers_step_or_fall_back_loudly(name):
    if name == "prodigy":
        pytest.importorskip("prodigyopt")
    p = parse_preset(
        {"family": "sd15", "optimizer": {"name": name, "learning_rate": 1.0 if name == "prodigy" else 1e-2}}
    )
    w = torch.nn.Parameter(torch.ones(4, 4))
    opt, used = make_optimizer(p, [{"params": [w], "lr": p.optimizer.learning_rate}], torch.device("cpu"))
    (w**2).sum().backward()
    opt.step()
    assert not torch.equal(w.detach(), torch.ones(4, 4))
    if name == "adamw8bit":  # no CUDA here: torch AdamW, and the note says so
        assert used == "adamw" and "training with torch AdamW instead" in check_optimizer(name, torch.device("cpu"))
    else:
        assert used == name and check_optimizer(name, torch.device("cpu")) is None


def test_adamw8bit_fallback_reaches_console_and_report(tiny_models, character):
    from charkit.train import loop

    said = []
    plan = loop.check_inputs(
        character,
        model=tiny_models("sd15").root,
        preset=tiny_preset("sd15", optimizer={"name": "adamw8bit"}),
        device="cpu",
        log=said.append,
    )
    assert not said  # nothing printed while validating (a bad input stays one line)
    session = loop.load(plan)
    assert any("adamw8bit: 8-bit AdamW needs CUDA" in m for m in said) and session.optimizer_name == "adamw"
    assert any("8-bit AdamW needs CUDA" in n for n in plan.notes)
