"""Finding and preparing datasets in a tfds ``data_dir``, in the random-access ``array_record`` format.

Bundled datasets are generated on first use; any other tfds dataset must already be prepared, or is downloaded and
prepared by tfds when asked (``download=True``), and otherwise :class:`DatasetNotPreparedError` says how.
"""

from __future__ import annotations

import contextlib
import difflib
import logging
import os

import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import tqdm_utils

from jaxnorm.lab.data.builders import BUILDERS, BUNDLED, SYNTHETIC_IMAGES, bundled_key
from jaxnorm.lab.data.synthetic import GENERATED

DATA_DIR_ENV = "JAXNORM_DATA_DIR"
DEFAULT_DATA_DIR = "~/tensorflow_datasets"
TFDS_CATALOG_URL = "https://www.tensorflow.org/datasets/catalog/overview"


class DatasetNotPreparedError(RuntimeError):
    """A tfds dataset is not prepared (in ``array_record`` format) in the data_dir that was searched."""


class UnknownDatasetError(ValueError):
    """Neither a bundled dataset nor a dataset in tfds's registry."""


def default_data_dir(data_dir: str | os.PathLike | None = None) -> str:
    """The data_dir to use: the argument, else $JAXNORM_DATA_DIR, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    chosen = data_dir or os.environ.get(DATA_DIR_ENV) or os.environ.get("TFDS_DATA_DIR") or DEFAULT_DATA_DIR
    return os.path.abspath(os.path.expanduser(os.fspath(chosen)))


def _unknown_dataset_error(name: str) -> UnknownDatasetError:
    known = [*BUNDLED, *SYNTHETIC_IMAGES, *GENERATED, *tfds.list_builders(with_community_datasets=False)]
    close = difflib.get_close_matches(name, known, n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return UnknownDatasetError(
        f"Unknown dataset {name!r}.{hint} Bundled (offline) datasets: "
        f"{', '.join(BUNDLED + SYNTHETIC_IMAGES + tuple(GENERATED))}; "
        f"any other name must be "
        f"a tensorflow-datasets builder (see the catalog at {TFDS_CATALOG_URL})."
    )


def _prepare_command(tfds_name: str, data_dir: str) -> str:
    return (
        f'python -c "import tensorflow_datasets as tfds; tfds.builder({tfds_name!r}, data_dir={data_dir!r})'
        f".download_and_prepare(file_format='array_record')\""
    )


def _not_prepared_error(
    name: str, builder: tfds.core.DatasetBuilder, data_dir: str, reason: str
) -> DatasetNotPreparedError:
    """The error for a tfds dataset ``name`` (as the user spelled it, config included) missing from ``data_dir``."""
    manual = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
    manual_note = (
        f"\n  {name} also needs files downloaded by hand into <data_dir>/downloads/manual first:\n"
        f"    {' '.join(str(manual).split())}"
        if manual
        else ""
    )
    return DatasetNotPreparedError(
        f"Dataset {name!r} (version {builder.version}) is not ready in data_dir={data_dir!r}: {reason}.\n"
        f"jaxnorm reads tfds datasets offline and does not download them unless asked. To prepare it, either\n"
        f"  * on a machine with internet access (and TensorFlow, which tfds uses to encode images) run\n"
        f"      {_prepare_command(name, data_dir)}\n"
        f"    and copy {os.path.join(data_dir, builder.name)} to the same place here (or point ${DATA_DIR_ENV} or "
        f"data_dir= at the copy); or\n"
        f"  * call jaxnorm.lab.data.load({name!r}, data_dir={data_dir!r}, download=True) here.{manual_note}"
    )


@contextlib.contextmanager
def _quiet_generation():
    """Silences tfds's notices while a dataset we generate offline is built, and restores them afterwards.

    tfds treats every build as a download: constructing the builder of a dataset not yet prepared logs an absl
    warning (``Variant folder ... has no dataset_info.json``), and the build draws progress bars. Warnings and
    below of the ``absl`` logger (tfds logs through absl) and the progress bars are off inside; absl errors and
    exceptions pass. (The "Downloading and preparing" notice is :class:`~jaxnorm.lab.data.builders.OfflineBuilder`'s
    to leave out.)
    """
    absl_logger = logging.getLogger("absl")
    level, bars = absl_logger.level, getattr(tqdm_utils, "_active", True)
    absl_logger.setLevel(logging.ERROR)
    tfds.display_progress_bar(False)
    try:
        yield
    finally:
        absl_logger.setLevel(level)
        tfds.display_progress_bar(bars)


def _has_random_access_format(builder: tfds.core.DatasetBuilder) -> bool:
    formats = builder.info.available_file_formats()
    return bool(formats & set(tfds.core.FileFormat.with_random_access()))


def prepare(
    name: str, data_dir: str | os.PathLike | None = None, *, download: bool = False
) -> tfds.core.DatasetBuilder:
    """Returns the tfds builder of ``name``, prepared in ``data_dir`` in array_record format.

    Bundled datasets are generated offline on first use and reused afterwards (the generator is not run again); the
    first use prints one line, ``preparing NAME (generated offline) in DATA_DIR ...``, and tfds's download notices,
    progress bars and absl warnings are silenced while it builds.
    Other tfds datasets must already be prepared there; with ``download=True`` tfds downloads and prepares them.

    Raises:
      UnknownDatasetError: ``name`` is neither bundled nor a tfds builder.
      DatasetNotPreparedError: a tfds dataset is not prepared in ``data_dir`` (or only in a format without random
        access, such as tfrecord) and ``download`` is False.
    """
    data_dir = default_data_dir(data_dir)
    key = bundled_key(name)
    if key is not None:
        with _quiet_generation():
            builder = BUILDERS[key](data_dir=data_dir)
            if not builder.is_prepared():
                print(f"preparing {name} (generated offline) in {data_dir} ...", flush=True)
                try:
                    builder.download_and_prepare(
                        file_format="array_record",
                        download_config=tfds.download.DownloadConfig(try_download_gcs=False),
                    )
                except OSError:
                    # Another process (another host on a shared disk) may have finished the same build first.
                    builder = BUILDERS[key](data_dir=data_dir)
                    if not builder.is_prepared():
                        raise
        return builder

    try:
        builder = tfds.builder(name, data_dir=data_dir, try_gcs=False)
    except tfds.core.DatasetNotFoundError:
        raise _unknown_dataset_error(name) from None
    if not builder.is_prepared():
        if not download:
            raise _not_prepared_error(name, builder, data_dir, f"nothing found at {builder.data_dir}")
        try:
            builder.download_and_prepare(file_format="array_record")
        except ModuleNotFoundError as e:
            if e.name != "importlib_resources":
                raise
            raise ModuleNotFoundError(
                f"tfds needs the package importlib_resources to download and prepare {name!r} (tfds 4.9.10 declares "
                f"it only for Python < 3.9); install it with `pip install importlib_resources`.",
                name=e.name,
            ) from e
    if not _has_random_access_format(builder):
        formats = sorted(str(f.value) for f in builder.info.available_file_formats())
        raise _not_prepared_error(
            name,
            builder,
            data_dir,
            f"it is prepared at {builder.data_dir} only as {formats}, which has no random access; delete that "
            f"directory (or use another data_dir) and prepare it with file_format='array_record'",
        )
    return builder
