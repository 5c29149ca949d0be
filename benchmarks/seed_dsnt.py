"""TF2 port of the seed's DSNT layer (the benchmark's "seed" reference).

The seed (``seeds/000``) is the original TensorFlow 1 DSNT layer by ashwhall,
https://github.com/ashwhall/dsnt, file ``dsnt.py`` (the revision whose
``js_reg_loss`` takes ``fwhm``, as the seed README documents; read at commit
8eb7e6a2edabd751af59b4245326428b3f83cb54). This file keeps its algorithm so
that the benchmark times what seed users actually ran:

* rectification: its own max-shifted 2-D softmax (``_softmax2d``), or
  abs / relu / sigmoid followed by a division by the sum;
* DSNT: coordinate matrices built with ``tf.tile`` (integer arithmetic, then
  a cast) and a Frobenius inner product per axis;
* the target Gaussians are drawn one at a time inside a ``tf.while_loop``
  that slices the first centre off the remaining ones and *concatenates* the
  new flattened Gaussian onto everything drawn so far (quadratic copying in
  the number of points); each Gaussian is drawn on a square of the larger
  side and cropped;
* JS divergence ``0.5 KL(p || m) + 0.5 KL(q || m)`` with ``1e-24`` inside the
  logs, mean over the batch.

Changes made so that it runs under TensorFlow 2 (nothing else was changed):

1. ``tf.log`` -> ``tf.math.log`` (``tf.log`` no longer exists).
2. ``tf.div`` -> ``tf.math.divide`` (``tf.div`` no longer exists).
3. Docstrings shortened and this header added; function names, argument
   names, defaults and statement order are the seed's.

Kept on purpose, although they are bugs of the seed (reported, not fixed):

* ``_normalise_heatmap``'s sum normalisation (methods abs / relu / sigmoid)
  reshapes the sums to a hard-coded ``[2, 1, 1]``, so those methods only run
  for a batch of exactly 2. The default ``softmax`` (the one benchmarked) does
  not use it, so the hard-coded batch did *not* need fixing to run.
* ``_make_gaussian`` reads centres in ``[0, 1]`` units (pixel
  ``centre * size - 0.5``) while ``dsnt`` returns ``[-1, 1]`` coordinates, so
  the README's ``js_reg_loss(norm_heatmaps, targets)`` with the same targets as
  the coordinate loss draws the target Gaussian in the wrong place. To compare
  with our ``dsnt.js_reg_loss(heatmaps, c)``, pass ``(c + 1) / 2`` here.
* ``_kl_2d``'s default ``eps=24`` (``1e-24`` was meant); ``_js_2d`` always
  passes ``1e-24``, so it does not change the JS loss.
* One point per image only (``[batch, height, width, 1]``); the benchmark
  folds K points into the batch (``[B * K, H, W, 1]``) to time K > 1.
"""

import tensorflow as tf


def dsnt(inputs, method='softmax'):
    '''DSNT: returns (norm_heatmap [batch, height, width], coords [batch, 2] as (x, y)).'''
    # Rectify and reshape inputs
    norm_heatmap = _normalise_heatmap(inputs, method)

    batch_count = tf.shape(norm_heatmap)[0]
    height = tf.shape(norm_heatmap)[1]
    width = tf.shape(norm_heatmap)[2]

    # Build the DSNT x, y matrices
    dsnt_x = tf.tile([[(2 * tf.range(1, width+1) - (width + 1)) / width]], [batch_count, height, 1])
    dsnt_x = tf.cast(dsnt_x, tf.float32)
    dsnt_y = tf.tile([[(2 * tf.range(1, height+1) - (height + 1)) / height]], [batch_count, width, 1])
    dsnt_y = tf.cast(tf.transpose(dsnt_y, perm=[0, 2, 1]), tf.float32)

    # Compute the Frobenius inner product
    outputs_x = tf.reduce_sum(tf.multiply(norm_heatmap, dsnt_x), axis=[1, 2])
    outputs_y = tf.reduce_sum(tf.multiply(norm_heatmap, dsnt_y), axis=[1, 2])

    # Zip into [x, y] pairs
    coords_zipped = tf.stack([outputs_x, outputs_y], axis=1)

    return norm_heatmap, coords_zipped


def js_reg_loss(heatmaps, centres, fwhm=1):
    '''Mean Jensen-Shannon divergence between heatmaps and target Gaussians (centres in [0, 1]).'''
    gauss = _make_gaussians(centres, tf.shape(heatmaps)[1], tf.shape(heatmaps)[2], fwhm)
    divergences = _js_2d(heatmaps, gauss)
    return tf.reduce_mean(divergences)


def _normalise_heatmap(inputs, method='softmax'):
    '''Rectifies [batch, height, width, 1] heatmaps and normalises them to sum to one.'''
    # Remove the final dimension as it's of size 1
    inputs = tf.reshape(inputs, tf.shape(inputs)[:3])

    # Normalise the values such that the values sum to one for each heatmap
    normalise = lambda x: tf.math.divide(x, tf.reshape(tf.reduce_sum(x, [1, 2]), [2, 1, 1]))  # TF2: tf.div

    # Perform rectification
    if method == 'softmax':
        inputs = _softmax2d(inputs, axes=[1, 2])
    elif method == 'abs':
        inputs = tf.abs(inputs)
        inputs = normalise(inputs)
    elif method == 'relu':
        inputs = tf.nn.relu(inputs)
        inputs = normalise(inputs)
    elif method == 'sigmoid':
        inputs = tf.nn.sigmoid(inputs)
        inputs = normalise(inputs)
    else:
        msg = "Unknown rectification method \"{}\"".format(method)
        raise ValueError(msg)
    return inputs


def _kl_2d(p, q, eps=24):
    unsummed_kl = p * (tf.math.log(p + eps) - tf.math.log(q + eps))  # TF2: tf.log
    kl_values = tf.reduce_sum(unsummed_kl, [-1, -2])
    return kl_values


def _js_2d(p, q, eps=1e-24):
    m = 0.5 * (p + q)
    return 0.5 * _kl_2d(p, m, eps) + 0.5 * _kl_2d(q, m, eps)


def _softmax2d(target, axes):
    '''A softmax over more than one axis.'''
    max_axis = tf.reduce_max(target, axes, keepdims=True)
    target_exp = tf.exp(target-max_axis)
    normalize = tf.reduce_sum(target_exp, axes, keepdims=True)
    softmax = target_exp / normalize
    return softmax


def _make_gaussian(size, centre, fwhm=1):
        '''One [height, width] Gaussian, centre (x, y) in normalised [0, 1] units.'''
        # Scale the normalised coordinates to be relative to the size of the frame
        centre = [centre[0] * tf.cast(size[1], tf.float32),
                  centre[1] * tf.cast(size[0], tf.float32)]
        # Find the largest side, as we build a square and crop to desired size
        square_size = tf.cast(tf.reduce_max(size), tf.float32)

        x = tf.range(0, square_size, 1, dtype=tf.float32)
        y = x[:,tf.newaxis]
        x0 = centre[0] - 0.5
        y0 = centre[1] - 0.5
        unnorm = tf.exp(-4*tf.math.log(2.) * ((x-x0)**2 + (y-y0)**2) / fwhm**2)[:size[0],:size[1]]  # TF2: tf.log
        norm = unnorm / tf.reduce_sum(unnorm)
        return norm


def _make_gaussians(centres_in, height, width, fwhm=1):
    '''A batch of Gaussians, one per centre, drawn one by one in a while_loop.'''
    def cond(centres, heatmaps):
        return tf.greater(tf.shape(centres)[0], 0)

    def body(centres, heatmaps):
        curr = centres[0]
        centres = centres[1:]
        new_heatmap = _make_gaussian([height, width], curr, fwhm)
        new_heatmap = tf.reshape(new_heatmap, [-1])

        heatmaps = tf.concat([heatmaps, new_heatmap], 0)
        return [centres, heatmaps]

    # Produce 1 heatmap per coordinate pair, build a list of heatmaps
    _, heatmaps_out = tf.while_loop(cond,
                                    body,
                                    [centres_in, tf.constant([])],
                                    shape_invariants=[tf.TensorShape([None, 2]), tf.TensorShape([None])])
    heatmaps_out = tf.reshape(heatmaps_out, [-1, height, width])
    return heatmaps_out
