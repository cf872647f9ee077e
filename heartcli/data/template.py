"""Template features of every beat: how far its shape is from its own patient's usual beat.

A premature ventricular beat is wide and odd *for this patient*; a supraventricular one
looks like the patient's normal beat. Absolute shapes differ from patient to patient (lead
placement, QRS axis), so a model trained on some patients misreads others. Comparing each
beat with the record's own median beat carries across patients (the "patient template" of
the inter-patient literature), and needs no labels: only the record's beats.

For the rows ``x`` (min-max normalised beats, 187 samples at 120 Hz, R-peak first) of one
record, the template is their per-sample median, and on the first ``TEMPLATE_SAMPLES`` = 48
samples (0.4 s from the R-peak: the end of the QRS complex, the ST segment and most of the
T wave; further on, the next beat starts at a place that depends on the RR interval):

* ``tpl_decorr = 1 - r``, with ``r`` the Pearson correlation of the beat and the template
  (0 for a beat shaped as the template; ``r`` is 1 where either is flat);
* ``tpl_rms`` = root mean square of ``beat - template``;
* ``tpl_peak`` = largest ``|beat - template|``.

The template is the median of every row of the record that is passed in: all of a
record's beats for `heart fetch` (so both parts of the random split share it) and for
`heart predict` on a record; a record with a single beat is its own template (0, 0, 0).
"""

from __future__ import annotations

import numpy as np

TEMPLATE_SAMPLES = 48
DEFINITIONS = {
    "tpl_decorr": f"1 - Pearson correlation of the beat's first {TEMPLATE_SAMPLES} samples "
    "with the record's median beat (1 - 1 where either is flat)",
    "tpl_rms": f"root mean square of the beat minus the record's median beat, first "
    f"{TEMPLATE_SAMPLES} samples",
    "tpl_peak": f"largest |beat - median beat| of the first {TEMPLATE_SAMPLES} samples",
}


def template_features(x: np.ndarray) -> np.ndarray:
    """float32 [n, 3] (``tpl_decorr``, ``tpl_rms``, ``tpl_peak``) for the beats ``x`` of
    one record, against their median."""
    beats = np.asarray(x, dtype=np.float64)[:, :TEMPLATE_SAMPLES]
    if len(beats) == 0:
        return np.zeros((0, 3), dtype=np.float32)
    template = np.median(beats, axis=0)
    diff = beats - template
    b = beats - beats.mean(axis=1, keepdims=True)
    t = template - template.mean()
    norm = np.sqrt((b**2).sum(axis=1)) * np.sqrt((t**2).sum())
    dot = b @ t
    r = np.divide(dot, norm, out=np.ones(len(beats)), where=norm > 0)
    out = np.stack(
        [1.0 - np.clip(r, -1.0, 1.0), np.sqrt((diff**2).mean(axis=1)), np.abs(diff).max(axis=1)],
        axis=1,
    )
    return out.astype(np.float32)
