"""configs/train/*.yaml: every recipe parses with train.py's arguments and names a registered model."""
import pytest

from ._tools import REPO_ROOT, load_tool

train = load_tool('train')
common = load_tool('_common')
RECIPES = sorted((REPO_ROOT / 'configs' / 'train').glob('*.yaml'))


def test_recipes_exist():
    names = {p.stem for p in RECIPES}
    assert {'digits', 'vmamba_tiny', 'vmamba_small', 'vmamba_base', 'vim_tiny', 'vim_small', 'efficientvmamba_tiny',
            'efficientvmamba_small', 'efficientvmamba_base'} <= names


@pytest.mark.parametrize('path', RECIPES, ids=lambda p: p.stem)
def test_recipe_parses(path):
    args, _ = common.parse_with_config(train.build_parser(), ['--config', str(path)])
    assert common.check_model_name(args.model) == args.model


@pytest.mark.parametrize('recipe, global_batch, lr', [
    ('vmamba_tiny', 1024, 1e-3),            # 5e-4 x 1024 / 512
    ('vim_small', 512, 1e-3),
    ('efficientvmamba_tiny', 2048, 2e-3),   # the training log's lr at 16 x 128
    ('efficientvmamba_base', 1024, 2e-3),
])
def test_official_lr_at_official_batch(recipe, global_batch, lr):
    args, _ = common.parse_with_config(train.build_parser(), ['--config', recipe])
    assert args.lr_base * global_batch / args.lr_base_size == pytest.approx(lr)


def test_unknown_config_key_is_an_error(tmp_path):
    bad = tmp_path / 'bad.yaml'
    bad.write_text('model: test_vmamba\nlearning_rate: 0.1\n')
    with pytest.raises(common.ToolError, match='learning_rate'):
        common.parse_with_config(train.build_parser(), ['--config', str(bad)])


def test_command_line_overrides_config():
    args, _ = common.parse_with_config(train.build_parser(), ['--config', 'vim_tiny', '--epochs', '3'])
    assert args.epochs == 3 and args.model == 'vim_tiny_patch16_224' and args.model_ema_decay == 0.99996
