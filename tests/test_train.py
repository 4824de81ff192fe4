"""`charkit train`: identity-aware LoRA training on tiny real models of every family.

Real pieces only: tiny random-weight pipelines built from configs (tests/fixtures_models.py), real
peft adapters, real safetensors files, real dlib face embeddings of public-domain photos. Tiny
models draw noise, so their probe renders show no face; the checkpoint chooser is tested on real
photos scored by dlib instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
from click.testing import CliRunner
from PIL import Image

from charkit.character import CharacterSpec, load_character, save_spec
from charkit.cli import cli
from charkit.errors import CharkitError
from charkit.families import FAMILIES, get_spec
from charkit.testing.stagefiles import write_dataset_file
from charkit.train import checkpoints as ckpt
from charkit.train.config import field_docs, load_preset, parse_preset

REPO = Path(__file__).resolve().parents[1]
FACES = Path(__file__).parent / "data" / "faces"
SIZE = 64  # tiny models train at 64x64 (VAE factor 2)


# ------------------------------------------------------------------------------------------ helpers


def make_character(
    root: Path, name: str = "alice", refs=("obama.jpg", "obama2.jpg", "obama3.jpg"), trigger="ohwx"
) -> Path:
    d = root / name
    (d / "refs").mkdir(parents=True)
    for r in refs:
        shutil.copy(FACES / r, d / "refs" / r)
    save_spec(d, CharacterSpec(name=name, trigger=[trigger], class_word="man"))
    return d


def write_dataset(character_dir: Path, photos=("obama.jpg", "obama2.jpg", "obama3.jpg"), size=(SIZE, SIZE)) -> Path:
    """A dataset folder in the format `charkit prep` writes (dataset.json + images/), at tiny size."""
    ds = character_dir / "dataset"
    (ds / "images").mkdir(parents=True)
    items = []
    for n in photos:
        name = Path(n).stem + ".png"
        with Image.open(FACES / n) as im:
            im.convert("RGB").resize(size, Image.Resampling.LANCZOS).save(ds / "images" / name)
        (ds / "images" / (Path(n).stem + ".txt")).write_text("ohwx man")
        items.append(
            {"file": f"images/{name}", "caption": "ohwx man", "width": size[0], "height": size[1], "source": n}
        )
    write_dataset_file(ds, items, character=character_dir.name, family="sd15", resolution=SIZE)
    return ds


def tiny_preset(family: str, **sections) -> dict:
    """A fast preset: 64px, 1 probe prompt x 1 seed, 2 sampling steps."""
    p = {
        "family": family,
        "lora": {"rank": 4, "alpha": 8},
        "optimizer": {"learning_rate": 1e-2},
        "train": {"steps": 2, "batch_size": 2},
        "eval": {"every": 2, "prompts": ["a photo of {trigger} {class}"], "seeds": [1], "steps": 2},
        "checkpoints": {"reserve_disk_mb": 0},
    }
    for k, v in sections.items():
        p[k] = {**p.get(k, {}), **v}
    return p


def render_np(pipe, seed: int = 3) -> np.ndarray:
    with torch.no_grad():
        return pipe(
            prompt="a photo of ohwx man",
            num_inference_steps=2,
            generator=torch.Generator().manual_seed(seed),
            output_type="np",
            height=SIZE,
            width=SIZE,
        ).images


def lora_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.fixture
def character(tmp_path) -> Path:
    d = make_character(tmp_path / "characters")
    write_dataset(d)
    return d


# --------------------------------------------------------------------------------------------- presets


def test_presets_parse_and_every_field_is_commented():
    names = {row[0] for row in field_docs() if not row[0].startswith("[")}
    for fam in FAMILIES:
        path = REPO / "training" / f"{fam}-lora.toml"
        preset = load_preset(path)
        assert preset.family == fam
        text = path.read_text()
        data = tomllib.loads(text)
        flat = {f"{s}.{k}" for s, sec in data.items() if isinstance(sec, dict) for k in sec}
        flat |= {s for s, v in data.items() if not isinstance(v, dict)}
        # Every field of the model is in the file (the file documents the whole preset)...
        sd_only = {"loss.noise_offset", "loss.snr_gamma"}
        flow_only = {
            f"loss.{k}" for k in ("timestep_sampling", "logit_mean", "logit_std", "mode_scale", "weighting", "guidance")
        }
        sd3_only = {"loss.precondition_outputs"}
        expected = names - (sd_only if preset.is_flow else flow_only) - (set() if fam == "sd3" else sd3_only)
        assert expected <= flat, f"{path.name} lacks {sorted(expected - flat)}"
        # ...and every assignment sits under a comment.
        lines = text.splitlines()
        for i, line in enumerate(lines):
            if re.match(r"^[a-z_]+ = ", line):
                j = i - 1
                while j >= 0 and re.match(r"^[a-z_]+ = ", lines[j]):
                    j -= 1
                assert lines[j].startswith("#"), f"{path.name}:{i + 1} {line!r} has no comment"
    # Every field has help text (docs, CLI and errors come from it), and docs/training.md covers every field and option.
    assert all(desc for _, _, desc in field_docs())
    doc = (REPO / "docs" / "training.md").read_text()
    assert all(f"`{n}`" in doc for n in names), sorted(n for n in names if f"`{n}`" not in doc)
    from charkit.train.cli import train

    opts = [o for p in train.params for o in p.opts if o.startswith("--")]
    assert opts and all(f"`{o}" in doc for o in opts), [o for o in opts if f"`{o}" not in doc]


@pytest.mark.parametrize(
    "data, needle",
    [
        ({"family": "sd15", "lora": {"rnak": 4}}, "field 'lora.rnak': unknown field"),
        ({"family": "sd15", "train": {"steps": 0}}, "field 'train.steps'"),
        ({"family": "flux", "lora": {"text_encoder": True}}, "lora.text_encoder"),
        ({"family": "sd3", "loss": {"snr_gamma": 5.0}}, "loss.snr_gamma"),
        ({"family": "sd9"}, "field 'family'"),
    ],
)
def test_preset_errors_name_file_and_field(data, needle):
    with pytest.raises(CharkitError) as e:
        parse_preset(data, "training/x.toml")
    assert str(e.value).startswith("training/x.toml: ") and needle in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------------------------- family table

# (family, preset changes): text-encoder LoRA where the family has it; gradient checkpointing and the
# uncached latent path each exercised once.
FAMILY_CASES = [
    ("sd15", {"lora": {"rank": 4, "alpha": 8, "text_encoder": True}, "train": {"gradient_checkpointing": True}}),
    ("sdxl", {"lora": {"rank": 4, "alpha": 4, "text_encoder": True}}),
    ("sd3", {"train": {"cache_latents": False}}),
    ("flux", {}),
    # kohya / ai-toolkit style: every Linear of the blocks (MLP, modulation), exported in BFL names, fused
    ("flux", {"lora": {"rank": 4, "alpha": 8, "scope": "all_linear"}}),
]


@pytest.mark.parametrize(
    "family, changes", FAMILY_CASES, ids=[c[0] + ("-all_linear" if "scope" in str(c[1]) else "") for c in FAMILY_CASES]
)
def test_train_export_reload(family, changes, tiny_models, character):
    """Loss falls on a fixed batch, LoRA weights change, and both exported files reproduce the trained model."""
    from charkit.families import get_family
    from charkit.train import loop
    from charkit.train.data import make_batch, step_generator
    from charkit.train.export import load_lora, looks_like_kohya_key, read_lora

    tiny = tiny_models(family)
    plan = loop.check_inputs(character, model=tiny.root, preset=tiny_preset(family, **changes), device="cpu")
    session = loop.load(plan)
    loop.cache(session)
    before = {
        n: p.detach().clone() for m in session.trained_modules for n, p in m.named_parameters() if p.requires_grad
    }
    assert before and all("lora_" in n for n in before)

    # A fixed batch (same images, noise and timesteps every step): the loss must fall.
    losses = []
    for _ in range(4):
        batch = make_batch(
            plan.dataset,
            session.latents,
            session.texts,
            indices=[0, 1],
            caption_dropout=0.0,
            generator=step_generator(0, 0, 0),
        )
        loss = session.family.training_loss(
            session.pipe,
            session.denoiser,
            session.noise_scheduler,
            batch,
            loss_cfg=plan.preset.loss,
            generator=step_generator(0, 0, 1),
        )
        losses.append(float(loss.detach()))
        session.accelerator.backward(loss)
        session.optimizer.step()
        session.optimizer.zero_grad()
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    after = {n: p.detach() for m in session.trained_modules for n, p in m.named_parameters() if p.requires_grad}
    unchanged = {n for n in before if torch.equal(before[n], after[n])}
    # Adapters that cannot get a gradient, by the architecture (not a bug): SDXL conditions on the penultimate
    # layer of text_encoder, so its last layer is unused; SD3's last block drops the context stream's output,
    # so that block's context query (add_q_proj) is unused.
    if family == "sdxl":
        last = f"encoder.layers.{session.pipe.text_encoder.config.num_hidden_layers - 1}."
        te1 = {n for n, p in session.pipe.text_encoder.named_parameters() if p.requires_grad}
        unchanged -= {n for n in te1 if n.startswith(last)}
    if family == "sd3":
        unchanged -= {
            n
            for n in unchanged
            if n.startswith(f"transformer_blocks.{len(session.denoiser.transformer_blocks) - 1}.attn.add_q_proj.")
        }
    assert not unchanged, f"unchanged LoRA tensors: {sorted(unchanged)[:3]}"

    # The lifecycle proper: 2 steps, checkpoint + probe + score at step 2, choose, export, register.
    loop.train_steps(session, progress=False)
    choice = loop.choose(session)
    exported, registered, report_json, report_html = loop.export(session, choice)
    assert choice.step == 2 and not choice.measured  # noise renders: no face, fallback to the last checkpoint
    assert session.scores[0].probes[0].status == "no_face"

    F = get_family(family)
    session.denoiser.eval()
    for te in session.trained_modules[1:]:
        te.eval()
    trained = render_np(session.pipe)
    base = render_np(F.load_pipeline(tiny.root))
    reloaded = {}
    for label, path in (("diffusers", exported.diffusers), ("kohya", exported.kohya)):
        pipe = F.load_pipeline(tiny.root)
        load_lora(pipe, path, family=family)
        reloaded[label] = render_np(pipe)
    assert np.abs(trained - base).max() > 1e-3, "the LoRA does not change the pixels"
    for label, img in reloaded.items():
        assert np.abs(img - trained).max() < 1e-5, f"{label} reload differs from the trained model"

    # kohya sd-scripts' own layout: lora_unet_ (UNet module names; Flux in BFL names with fused qkv, SD3 in
    # Stability's), text encoders lora_te*_, down/up/alpha, and alpha / rank of every module = the trained one.
    sd, meta = read_lora(exported.kohya)
    assert all(looks_like_kohya_key(k) for k in sd), [k for k in sd if not looks_like_kohya_key(k)][:3]
    head = {
        "flux": "lora_unet_double_blocks_0_img_attn_qkv",
        "sd3": "lora_unet_joint_blocks_0_x_block_attn_qkv",
    }.get(family, "lora_unet_")
    assert any(k.startswith(head) and k.endswith(".lora_down.weight") for k in sd), sorted(sd)[:4]
    assert not any(k.startswith("lora_transformer_") for k in sd)
    if plan.preset.lora.scope == "all_linear":  # MLP and modulation layers, in sd-scripts' BFL names
        for name in ("double_blocks_0_img_mlp_0", "double_blocks_0_txt_mod_lin", "single_blocks_0_linear2"):
            assert f"lora_unet_{name}.lora_down.weight" in sd, name
    te_heads = (
        {"sd15": ("lora_te_",), "sdxl": ("lora_te1_", "lora_te2_")}.get(family, ())
        if plan.preset.lora.text_encoder
        else ()
    )
    for h in te_heads:
        assert any(k.startswith(h + "text_model_encoder_layers_") for k in sd), h
    scales = {
        round(float(v) / sd[k.replace(".alpha", ".lora_down.weight")].shape[0], 6)
        for k, v in sd.items()
        if k.endswith(".alpha")
    }
    assert scales == {plan.preset.lora.alpha / plan.preset.lora.rank}
    assert meta["ss_network_dim"] == "4" and meta["charkit.family"] == family
    assert meta["modelspec.architecture"] == get_spec(family).modelspec_architecture + "/lora"
    assert meta["modelspec.trigger_phrase"] == "ohwx" and meta["modelspec.resolution"] == f"{SIZE}x{SIZE}"
    _, dmeta = read_lora(exported.diffusers)
    assert (
        dmeta["charkit.trigger"] == "ohwx"
        and dmeta["charkit.steps"] == "2"
        and dmeta["charkit.identity"] == "unmeasured"
    )
    assert (
        json.loads(dmeta["lora_adapter_metadata"])[f"{session.spec.denoiser}.r"] == 4
    )  # diffusers rebuilds the adapter

    # Registered for `charkit render`, report written.
    assert load_character(character).lora_path(family) == exported.diffusers.resolve()
    report = json.loads(report_json.read_text())
    assert report["choice"]["step"] == 2 and report["checkpoints"][0]["probes"][0]["status"] == "no_face"
    html = report_html.read_text()
    assert "<svg" in html and "data:image/jpeg;base64," in html and "<script" not in html


def test_cached_and_uncached_latents_agree(tiny_models, character):
    from charkit.train import loop
    from charkit.train.data import LatentSource, step_generator

    plan = loop.check_inputs(character, model=tiny_models("sd15").root, preset=tiny_preset("sd15"), device="cpu")
    from charkit.families import family_part, get_family

    pipe = get_family("sd15").load_pipeline(plan.model)
    fam = family_part("sd15", "lora")
    cached = LatentSource(pipe, plan.dataset, fam, cached=True, device="cpu")
    cached.prepare()
    uncached = LatentSource(pipe, plan.dataset, fam, cached=False, device="cpu")
    a = cached.sample([0, 2], step_generator(0, 0, 5))
    b = uncached.sample([0, 2], step_generator(0, 0, 5))
    assert a.shape == (2, 4, SIZE // 2, SIZE // 2) and torch.allclose(a, b, atol=1e-5)


# ----------------------------------------------------------------------------------- crash safety

RESUME_PRESET = tiny_preset(
    "sd15", lora={"dropout": 0.1, "text_encoder": True}, train={"steps": 4, "batch_size": 2}, eval={"every": 2}
)


def _resume_run(character: Path, tiny_models, out: Path, **kw):
    """A RESUME_PRESET run of the tiny SD1.5 into ``out`` (``kw``: resume, on_step, log)."""
    from charkit.train import loop

    return loop.train_lora(
        character,
        model=tiny_models("sd15").root,
        preset=RESUME_PRESET,
        device="cpu",
        out=out,
        progress=False,
        register=False,
        **kw,
    )


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def reference_run(tiny_models, tmp_path_factory):
    """An uninterrupted 4-step sd15 run (UNet + text-encoder LoRA, dropout on, so the restored RNG matters)."""

    root = tmp_path_factory.mktemp("reference")
    d = make_character(root / "characters")
    write_dataset(d)
    with pytest.MonkeyPatch.context() as mp:  # module scope runs before conftest's per-test cache isolation
        mp.setenv("CHARKIT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "charkit-cache"))
        return _resume_run(d, tiny_models, root / "run")


def _same_lora(a: Path, b: Path, atol=1e-6):
    ta, tb = lora_tensors(a), lora_tensors(b)
    assert ta.keys() == tb.keys()
    worst = max(float((ta[k] - tb[k]).abs().max()) for k in ta)
    assert worst <= atol, worst


def test_resume_matches_uninterrupted_run(reference_run, tiny_models, character, tmp_path):
    from charkit.train.loop import train_lora

    out = tmp_path / "run"

    def stop_at_3(step, loss):
        if step == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        _resume_run(character, tiny_models, out, on_step=stop_at_3)
    assert [c.step for c in ckpt.list_checkpoints(out)] == [2]
    r = _resume_run(character, tiny_models, out, resume=True)
    assert r.steps == 4 and [s.step for s in r.scores] == [2, 4]
    assert [s for s, _ in r.losses] == [1, 2, 3, 4]
    assert np.allclose([v for _, v in r.losses], [v for _, v in reference_run.losses], atol=1e-6)
    _same_lora(r.best, reference_run.best)

    # A resume must keep the run's adapter: another rank is refused before anything loads.
    other = {**RESUME_PRESET, "lora": {**RESUME_PRESET["lora"], "rank": 8}}
    with pytest.raises(CharkitError, match="preset field 'lora.rank' is 8 but the run used 4"):
        train_lora(character, model=tiny_models("sd15").root, preset=other, device="cpu", out=out, resume=True)


def test_kill9_during_save_keeps_previous_checkpoint(reference_run, tiny_models, character, tmp_path):
    """A real SIGKILL in the middle of saving step 4 (after the weights, before the manifest)."""
    out = tmp_path / "run"
    script = textwrap.dedent(f"""
        import os, signal, torch
        torch.set_num_threads(1)
        from pathlib import Path
        import charkit.train.checkpoints as C
        real = C.atomic_write_json
        def dying(path, obj):
            if Path(path).name == "manifest.json" and ".step-000004" in str(path):
                os.kill(os.getpid(), signal.SIGKILL)
            real(path, obj)
        C.atomic_write_json = dying
        from charkit.train.loop import train_lora
        train_lora({str(character)!r}, model={str(tiny_models("sd15").root)!r}, preset={RESUME_PRESET!r},
                   device="cpu", out={str(out)!r}, progress=False, register=False)
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, timeout=240)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    leftovers = [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".step-000004")]
    assert leftovers and (out / "checkpoints" / leftovers[0] / "lora.safetensors").is_file()
    assert [c.step for c in ckpt.list_checkpoints(out)] == [2]  # the half-written step 4 is ignored

    r = _resume_run(character, tiny_models, out, resume=True)
    assert r.steps == 4 and not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    _same_lora(r.best, reference_run.best)


def test_kill9_inside_probe_rendering_then_resume(reference_run, tiny_models, character, tmp_path):
    """SIGKILL while step 2's probes render (after its save): the resume scores step 2 first, says where it goes on,
    trains to the end, and ends with the uninterrupted run's LoRA."""
    out = tmp_path / "run"
    script = textwrap.dedent(f"""
        import os, signal, torch
        torch.set_num_threads(1)
        import charkit.train.loop as L
        real = L.render_probes
        def dying(session, specs):
            if session.step == 2 and not session.plan.run_dir.joinpath("evals", "step-000002.json").exists() \
                    and session.baseline is not None:
                os.kill(os.getpid(), signal.SIGKILL)  # e.g. the OOM killer while rendering probes
            return real(session, specs)
        L.render_probes = dying
        L.train_lora({str(character)!r}, model={str(tiny_models("sd15").root)!r}, preset={RESUME_PRESET!r},
                     device="cpu", out={str(out)!r}, progress=False, register=False)
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO, capture_output=True, timeout=240)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert [c.step for c in ckpt.list_checkpoints(out)] == [2]  # saved...
    assert sorted(p.name for p in (out / "evals").iterdir()) == ["step-000000.json"]  # ...but never scored

    said = []
    r = _resume_run(character, tiny_models, out, resume=True, log=said.append)
    resumed = [m for m in said if m.startswith("resuming")]
    assert resumed and "from step 2 of 4" in resumed[0] and "checkpoint(s) 2 were saved but not scored" in resumed[0]
    assert [s.step for s in r.scores] == [2, 4] and r.choice.step in (2, 4)
    assert (out / "evals" / "step-000002.json").is_file() and (out / "probes" / "step-000002").is_dir()
    _same_lora(r.best, reference_run.best)
    assert json.loads(r.report_json.read_text())["resumed_from"] == 2


class ProbeCrash(Exception):
    pass


def test_crash_in_the_last_probes_finishes_on_resume(reference_run, tiny_models, character, tmp_path, monkeypatch):
    """A crash in the last checkpoint's probes (say CUDA out of memory): --resume at step 4 of 4 scores it, chooses
    among all checkpoints, exports; the console says where it continues."""
    from charkit.train import loop

    out = tmp_path / "run"
    real = loop.render_probes

    def crash(session, specs):
        if session.step == 4:
            raise ProbeCrash("CUDA out of memory")
        return real(session, specs)

    monkeypatch.setattr(loop, "render_probes", crash)
    with pytest.raises(ProbeCrash):
        _resume_run(character, tiny_models, out)
    assert [c.step for c in ckpt.list_checkpoints(out)] == [2, 4]
    assert not (out / "evals" / "step-000004.json").exists()
    monkeypatch.setattr(loop, "render_probes", real)
    import tomli_w

    preset = tmp_path / "p.toml"
    preset.write_text(tomli_w.dumps(parse_preset(RESUME_PRESET).model_dump(mode="json", exclude_none=True)))
    res = CliRunner().invoke(
        cli,
        ["train", str(character), "-m", str(tiny_models("sd15").root), "-p", str(preset), "--out", str(out)]
        + ["--resume", "--device", "cpu", "--quiet", "--no-register"],
    )
    assert res.exit_code == 0, res.output
    assert "resuming" in res.output and "from step 4 of 4" in res.output and "4 were saved but not scored" in res.output
    report = json.loads((out / "training_report.json").read_text())
    assert [c["step"] for c in report["checkpoints"]] == [2, 4] and report["choice"]["step"] == 4
    _same_lora(out / "best.safetensors", reference_run.best)


def test_two_processes_share_one_lora(tiny_models, character, tmp_path):
    """accelerate with 2 CPU processes: each draws its own batches, gradients are averaged, only rank 0 writes."""
    from accelerate import debug_launcher
    from accelerate.state import AcceleratorState

    model = tiny_models("sd15").root
    preset = tiny_preset("sd15", train={"steps": 3}, eval={"every": 2})

    def worker():
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        from charkit.train import loop

        AcceleratorState._reset_state(reset_partial_state=True)  # forked from a process that already had one
        plan = loop.check_inputs(
            character, model=model, preset=preset, device="cpu", out=tmp_path / "run", register=False
        )
        s = loop.load(plan)
        loop.cache(s)
        loop.train_steps(s, progress=False)
        rank = s.accelerator.process_index
        save_file(get_peft_model_state_dict(s.pipe.unet), str(tmp_path / f"rank{rank}.safetensors"))
        (tmp_path / f"rank{rank}.json").write_text(json.dumps({"n": s.accelerator.num_processes, "losses": s.losses}))

    debug_launcher(worker, num_processes=2)
    AcceleratorState._reset_state(reset_partial_state=True)
    info = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [i["n"] for i in info] == [2, 2]
    assert info[0]["losses"] != info[1]["losses"]  # different batches per process...
    _same_lora(tmp_path / "rank0.safetensors", tmp_path / "rank1.safetensors", atol=0.0)  # ...one averaged update
    assert [c.step for c in ckpt.list_checkpoints(tmp_path / "run")] == [2, 3]
    assert json.loads((tmp_path / "run" / "training_report.json").read_text())["steps"]["done"] == 3


def test_non_finite_loss_stops_and_saves_nothing_non_finite(tiny_models, character, tmp_path):
    from charkit.train.loop import NonFiniteLossError, train_lora

    # A learning rate this large blows the LoRA weights up after one step: the loss turns inf/NaN.
    preset = tiny_preset(
        "sd15", optimizer={"learning_rate": 1e30, "max_grad_norm": 0.0}, train={"steps": 8}, eval={"every": 2}
    )
    seen = []
    with pytest.raises(NonFiniteLossError) as e:
        train_lora(
            character,
            model=tiny_models("sd15").root,
            preset=preset,
            device="cpu",
            out=tmp_path / "run",
            progress=False,
            register=False,
            on_step=lambda s, v: seen.append(v),
        )
    msg = str(e.value)
    assert "not finite" in msg and "3 consecutive steps" in msg and "learning_rate" in msg and "\n" not in msg
    # Step 1 trains (finite), blows the weights up; steps 2-4 are NaN/inf and step 4 stops the run.
    assert "stopped at step 4" in msg and np.isfinite(seen[0]) and not any(np.isfinite(v) for v in seen[1:3])
    for c in ckpt.list_checkpoints(tmp_path / "run"):
        assert all(torch.isfinite(t).all() for t in lora_tensors(c.lora_file).values())
    assert load_character(character).lora_path("sd15") is None


def _state(step: int, value: float = 1.0) -> ckpt.CheckpointState:
    return ckpt.CheckpointState(
        step=step,
        lora={"unet.a.lora_A.weight": torch.full((2, 3), value)},
        lora_metadata={"format": "pt"},
        optimizer={
            "state": {0: {"step": torch.tensor(float(step)), "exp_avg": torch.ones(2, 3)}},
            "param_groups": [{"lr": 0.1, "betas": (0.9, 0.99), "params": [0]}],
        },
        lr_scheduler={"last_epoch": step},
        scaler=None,
        rng=ckpt.RngState.capture(),
        losses=[[step, 0.5]],
    )


def test_checkpoints_atomic_verified_and_guarded(tmp_path):
    run = tmp_path / "run"
    ckpt.save_checkpoint(run, _state(2))
    info4 = ckpt.save_checkpoint(run, _state(4, 2.0))
    assert [c.step for c in ckpt.list_checkpoints(run)] == [2, 4]
    back = ckpt.load_checkpoint(info4)
    assert torch.equal(back.lora["unet.a.lora_A.weight"], torch.full((2, 3), 2.0))
    assert back.optimizer["param_groups"][0]["betas"] == [0.9, 0.99] and back.optimizer["state"][0]["step"] == 4.0

    # A corrupted file (bytes differ from the manifest) or a missing manifest: not trusted, step 2 is newest.
    with open(info4.path / "optimizer.safetensors", "r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x00")
    assert ckpt.latest_checkpoint(run).step == 2
    (run / "checkpoints" / "step-000006").mkdir()
    (run / "checkpoints" / "step-000006" / "lora.safetensors").write_bytes(b"partial")
    assert ckpt.latest_checkpoint(run).step == 2

    # Non-finite weights are refused before anything is written.
    with pytest.raises(CharkitError, match="not finite"):
        ckpt.save_checkpoint(run, _state(8, float("nan")))
    assert not (run / "checkpoints" / "step-000008").exists()

    # Not enough disk: a clear error before anything is written.
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(CharkitError, match="not enough free disk") as e:
        ckpt.save_checkpoint(run, _state(10), reserve_bytes=free * 2)
    assert "reserve_disk_mb" in str(e.value) and not (run / "checkpoints" / "step-000010").exists()
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


def test_disk_check_stops_training_before_the_first_save(tiny_models, character, tmp_path):
    from charkit.train.loop import train_lora

    preset = tiny_preset("sd15", checkpoints={"reserve_disk_mb": 10**9})  # 1 PB reserve
    with pytest.raises(CharkitError, match="not enough free disk"):
        train_lora(
            character, model=tiny_models("sd15").root, preset=preset, device="cpu", out=tmp_path / "run", progress=False
        )
    assert ckpt.list_checkpoints(tmp_path / "run") == []
    assert load_character(character).lora_path("sd15") is None


# ------------------------------------------------------------------------------------- CLIP adherence


@pytest.fixture(scope="module")
def tiny_clip(tiny_models, tmp_path_factory) -> Path:
    """A tiny random-weight CLIPModel folder (with tokenizer and image processor), loadable offline."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    out = tmp_path_factory.mktemp("clip")
    tok = CLIPTokenizer.from_pretrained(tiny_models("sd15").root / "tokenizer")
    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=tok.vocab_size,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    CLIPModel(cfg).save_pretrained(out)
    proc = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=tok,
    )
    proc.save_pretrained(out)
    return out


def test_cli_end_to_end_with_prep_and_clip(tiny_models, tiny_clip, tmp_path, monkeypatch):
    """`charkit train` on a character without a dataset: prep runs, CLIP scores adherence, report + files appear."""
    base = load_preset(REPO / "training" / "sd15-lora.toml").model_dump(mode="json", exclude_none=True)
    base["eval"].update(
        prompts=["a photo of {trigger} {class}", "an oil painting of {trigger} {class} in a forest"], seeds=[1], steps=2
    )
    base["train"].update(batch_size=2, resolution=SIZE)
    base["checkpoints"]["reserve_disk_mb"] = 0
    import tomli_w

    preset = tmp_path / "sd15-test.toml"
    preset.write_text(tomli_w.dumps(base))
    # A trigger with markup: the HTML report must show it as text.
    d = make_character(
        tmp_path / "characters", refs=("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg"), trigger="<i>ohwx</i>"
    )
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(
        cli,
        [
            "train",
            str(d),
            "--model",
            str(tiny_models("sd15").root),
            "--preset",
            str(preset),
            "--steps",
            "2",
            "--eval-every",
            "1",
            "--device",
            "cpu",
            "--clip-model",
            str(tiny_clip),
            "--run",
            "quick",
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    run = d / "loras" / "sd15" / "quick"
    assert "best: step " in res.output and str(run / "best.safetensors") in res.output
    assert (d / "dataset" / "dataset.json").is_file()  # prep ran (and dropped Biden as an identity outlier)
    sources = [it["source"] for it in json.loads((d / "dataset" / "dataset.json").read_text())["items"]]
    assert "biden.jpg" not in sources
    report = json.loads((run / "training_report.json").read_text())
    assert [c["step"] for c in report["checkpoints"]] == [1, 2]
    adh = [p["adherence"] for c in report["checkpoints"] for p in c["probes"]]
    assert all(a is not None and 0.0 <= a <= 100.0 for a in adh)
    # Noise renders show no face: every checkpoint fails the face gate and the run says identity was unmeasured.
    assert set(report["choice"]["excluded"]) == {"1", "2"} and not report["choice"]["identity_measured"]
    assert report["baseline"]["step"] == 0 and report["baseline"]["probes"][0]["adherence"] is not None
    assert report["adherence"]["clip_model"] == str(tiny_clip)
    assert report["notes"][0].startswith("mixed precision fp16 needs a GPU")
    assert (run / "best.kohya.safetensors").is_file()
    html = (run / "training_report.html").read_text()
    assert "<i>ohwx" not in html and "&lt;i&gt;ohwx&lt;/i&gt;" in html
    assert load_character(d).spec.lora["sd15"] == "loras/sd15/quick/best.safetensors"


# ----------------------------------------------------------------------------------------- bad input


def _corrupt(d: Path):
    write_dataset(d)
    (d / "dataset" / "images" / "obama2.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")


def _empty(d: Path):
    ds = write_dataset(d)
    meta = json.loads((ds / "dataset.json").read_text())
    meta.update(items=[], rejected=[{"source": "x.jpg", "reason": "no_face"}])
    (ds / "dataset.json").write_text(json.dumps(meta))


def _all_rejected(d: Path):
    for f in (d / "refs").iterdir():
        f.unlink()
    rng = np.random.default_rng(0)
    for i in range(2):  # real image files without any face: prep rejects them all
        Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(d / "refs" / f"noise{i}.png")


@pytest.mark.parametrize(
    "breaks, needle",
    [
        (_corrupt, "obama2.png: could not decode image"),
        (_empty, "the dataset has no images (all 1 references were rejected"),
        (_all_rejected, "all 2 references were rejected"),
    ],
    ids=["corrupt-image", "empty", "all-rejected"],
)
def test_bad_datasets_are_one_line_errors(breaks, needle, tiny_models, tmp_path):
    d = make_character(tmp_path / "characters")
    breaks(d)
    res = CliRunner().invoke(
        cli,
        [
            "train",
            str(d),
            "--model",
            str(tiny_models("sd15").root),
            "--preset",
            str(REPO / "training" / "sd15-lora.toml"),
            "--device",
            "cpu",
            "--quiet",
        ],
    )
    assert res.exit_code == 2, res.output
    line = res.output.strip()
    assert line.startswith("Error: ") and "\n" not in line and needle in line, line
    assert not (d / "loras").exists()  # nothing written


def test_bad_options_are_one_line_errors(tiny_models, character, tmp_path):
    cases = [
        (["--preset", str(tmp_path / "nope.toml")], "--preset"),
        (["--preset", str(REPO / "training" / "sd15-lora.toml"), "--resume"], "--resume: no earlier run"),
        (["--preset", str(REPO / "training" / "sd15-lora.toml"), "--run", "../escape"], "--run"),
        (["--preset", str(REPO / "training" / "sd15-lora.toml"), "--clip-model", str(tmp_path)], "clip model"),
        (["--preset", str(REPO / "training" / "flux-lora.toml")], "is a sd15 model but the preset trains flux"),
    ]
    for extra, needle in cases:
        res = CliRunner().invoke(
            cli,
            ["train", str(character), "--model", str(tiny_models("sd15").root), "--device", "cpu", "--quiet", *extra],
        )
        assert res.exit_code == 2 and res.output.startswith("Error: ") and needle in res.output, (extra, res.output)
