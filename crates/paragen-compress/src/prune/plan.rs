//! Which heads and neurons go: the importance scores ranked across the model.

use paragen_models::prune::{LayerPlan, LayerUnits, ModelUnits, PrunePlan};

use super::{LayerRef, PruneError, PruneSpec, Stack};

/// Of every group of scores, the indices to keep when the `remove` lowest scores of all
/// groups together go, each group scaled by its L2 norm first and keeping at least one.
fn keep_best(
    groups: &[&[f32]],
    remove: usize,
    what: &'static str,
    per: &'static str,
) -> Result<Vec<Vec<usize>>, PruneError> {
    let total: usize = groups.iter().map(|g| g.len()).sum();
    let most = total - groups.len();
    if remove > most {
        return Err(PruneError::TooMany {
            asked: remove,
            total,
            most,
            what,
            per,
        });
    }
    let mut ranked: Vec<(f32, usize, usize)> = Vec::with_capacity(total);
    for (g, scores) in groups.iter().enumerate() {
        let norm = scores.iter().map(|s| s * s).sum::<f32>().sqrt();
        let norm = if norm > 0.0 { norm } else { 1.0 };
        ranked.extend(scores.iter().enumerate().map(|(u, &s)| (s / norm, g, u)));
    }
    ranked.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut left: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    let mut removed = vec![Vec::new(); groups.len()];
    let mut to_go = remove;
    for (_, g, u) in ranked {
        if to_go == 0 {
            break;
        }
        if left[g] > 1 {
            left[g] -= 1;
            removed[g].push(u);
            to_go -= 1;
        }
    }
    Ok(groups
        .iter()
        .zip(removed)
        .map(|(scores, gone)| (0..scores.len()).filter(|u| !gone.contains(u)).collect())
        .collect())
}

/// Units to remove: `ratio` of `total`, rounded up (so at least the share asked).
fn share(ratio: f64, total: usize) -> usize {
    ((ratio * total as f64) - 1e-9).ceil().max(0.0) as usize
}

/// The plan that removes what `spec` asks of a model with these importance `scores`.
pub fn plan(scores: &ModelUnits<f32>, spec: &PruneSpec) -> Result<PrunePlan, PruneError> {
    spec.check()?;
    let layer_counts = [
        (Stack::Encoder, scores.encoder.len()),
        (Stack::Decoder, scores.decoder.len()),
    ];
    for layer in &spec.drop_layers {
        let count = layer_counts
            .iter()
            .find(|(stack, _)| *stack == layer.stack)
            .map_or(0, |c| c.1);
        if layer.index >= count {
            return Err(PruneError::Layer {
                text: layer.to_string(),
                reason: format!("the model has {count} layers in that stack"),
            });
        }
    }
    let stays = |stack, index| !spec.drop_layers.contains(&LayerRef { stack, index });
    let kept: Vec<(Stack, usize, &LayerUnits<f32>)> = scores
        .encoder
        .iter()
        .enumerate()
        .map(|(i, l)| (Stack::Encoder, i, l))
        .chain(
            scores
                .decoder
                .iter()
                .enumerate()
                .map(|(i, l)| (Stack::Decoder, i, l)),
        )
        .filter(|(stack, i, _)| stays(*stack, *i))
        .collect();
    for stack in [Stack::Encoder, Stack::Decoder] {
        if !kept.iter().any(|(s, _, _)| *s == stack) {
            return Err(PruneError::Layer {
                text: spec
                    .drop_layers
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                reason: format!("it removes every {stack:?} layer; keep at least one")
                    .to_lowercase(),
            });
        }
    }
    // One group per attention (a decoder layer has two) and per feed-forward block.
    let head_groups: Vec<&[f32]> = kept
        .iter()
        .flat_map(|(_, _, l)| [l.self_heads.as_slice(), l.cross_heads.as_slice()])
        .filter(|g| !g.is_empty())
        .collect();
    let neuron_groups: Vec<&[f32]> = kept.iter().map(|(_, _, l)| l.neurons.as_slice()).collect();
    let total_heads = head_groups.iter().map(|g| g.len()).sum();
    let total_neurons = neuron_groups.iter().map(|g| g.len()).sum();
    let mut heads = keep_best(
        &head_groups,
        share(spec.heads, total_heads),
        "attention heads",
        "attention",
    )?
    .into_iter();
    let mut neurons = keep_best(
        &neuron_groups,
        share(spec.ffn, total_neurons),
        "feed-forward neurons",
        "feed-forward block",
    )?
    .into_iter();
    let mut plan = PrunePlan::default();
    for (stack, index, layer) in [Stack::Encoder, Stack::Decoder].into_iter().flat_map(|s| {
        let layers = match s {
            Stack::Encoder => &scores.encoder,
            Stack::Decoder => &scores.decoder,
        };
        layers.iter().enumerate().map(move |(i, l)| (s, i, l))
    }) {
        let entry: LayerPlan = stays(stack, index).then(|| LayerUnits {
            self_heads: heads.next().expect("one group per attention"),
            cross_heads: if layer.cross_heads.is_empty() {
                Vec::new()
            } else {
                heads.next().expect("one group per attention")
            },
            neurons: neurons.next().expect("one group per feed-forward block"),
        });
        match stack {
            Stack::Encoder => plan.encoder.push(entry),
            Stack::Decoder => plan.decoder.push(entry),
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use paragen_models::prune::{LayerUnits, ModelUnits};

    fn layer(heads: &[f32], cross: &[f32], neurons: &[f32]) -> LayerUnits<f32> {
        LayerUnits {
            self_heads: heads.to_vec(),
            cross_heads: cross.to_vec(),
            neurons: neurons.to_vec(),
        }
    }

    /// Encoder layer 1 matters ten times more than layer 0 in absolute terms; per
    /// layer, scores are compared after normalisation.
    fn scores() -> ModelUnits<f32> {
        ModelUnits {
            encoder: vec![
                layer(&[0.1, 0.4, 0.2, 0.3], &[], &[1.0, 0.0, 3.0, 2.0]),
                layer(&[1.0, 4.0, 2.0, 3.0], &[], &[10.0, 40.0, 30.0, 20.0]),
            ],
            decoder: vec![layer(
                &[0.0, 0.0, 0.0, 5.0],
                &[1.0, 1.0, 1.0, 1.0],
                &[5.0, 6.0, 7.0, 8.0],
            )],
        }
    }

    fn spec(heads: f64, ffn: f64, drop: &[&str]) -> PruneSpec {
        PruneSpec {
            heads,
            ffn,
            drop_layers: drop.iter().map(|d| d.parse().unwrap()).collect(),
            sparsity: 0.0,
        }
    }

    #[test]
    fn the_least_important_units_go_first_after_normalising_each_layer() {
        // 16 heads: a quarter is 4. Normalised, the decoder self-attention's three zeros
        // are lowest; the encoder layers have the same relative scores, so their
        // weakest heads (index 0 each, 0.18 of the norm) tie and the first one goes.
        let plan = plan(&scores(), &spec(0.25, 0.25, &[])).unwrap();
        let kept = |l: &LayerPlan| l.as_ref().unwrap().clone();
        let decoder = kept(&plan.decoder[0]);
        assert_eq!(decoder.self_heads, vec![3]);
        assert_eq!(decoder.cross_heads, vec![0, 1, 2, 3]);
        let removed_encoder_heads: usize = plan
            .encoder
            .iter()
            .map(|l| 4 - kept(l).self_heads.len())
            .sum();
        assert_eq!(removed_encoder_heads, 1);
        // 12 neurons: 3 go, the lowest normalised scores: encoder 0 neuron 1 (0), then
        // encoder 0 neuron 0 and encoder 1 neuron 0 (both 0.18 of their norm).
        assert_eq!(kept(&plan.encoder[0]).neurons, vec![2, 3]);
        assert_eq!(kept(&plan.encoder[1]).neurons, vec![1, 2, 3]);
        assert_eq!(decoder.neurons, vec![0, 1, 2, 3]);
    }

    #[test]
    fn shares_round_up_and_every_attention_keeps_a_head() {
        // 4 attentions of 4 heads: at most 12 can go. ceil(0.75 * 16) = 12 leaves one
        // head in each; ceil(0.76 * 16) = 13 is refused.
        let plan = plan_ok(spec(0.75, 0.0, &[]));
        assert!(plan.encoder.iter().chain(&plan.decoder).all(|l| {
            let l = l.as_ref().unwrap();
            l.self_heads.len() == 1 && l.cross_heads.len() <= 1
        }));
        let err = plan_err(spec(0.76, 0.0, &[]));
        assert!(
            err.contains("remove 13 of 16") && err.contains("at most 12"),
            "{err}"
        );
    }

    fn plan_ok(spec: PruneSpec) -> PrunePlan {
        plan(&scores(), &spec).unwrap()
    }

    fn plan_err(spec: PruneSpec) -> String {
        plan(&scores(), &spec).unwrap_err().to_string()
    }

    #[test]
    fn dropped_layers_leave_the_plan_and_the_shares_count_what_stays() {
        let plan = plan_ok(spec(0.5, 0.0, &["encoder.1"]));
        assert!(plan.encoder[1].is_none());
        // 12 heads stay in the layers kept; half go.
        let heads: usize = [&plan.encoder[0], &plan.decoder[0]]
            .iter()
            .map(|l| {
                let l = l.as_ref().unwrap();
                l.self_heads.len() + l.cross_heads.len()
            })
            .sum();
        assert_eq!(heads, 6);
    }

    #[test]
    fn bad_requests_name_the_value() {
        for (spec, message) in [
            (spec(1.0, 0.0, &[]), "--heads 1 is outside [0, 1)"),
            (spec(0.0, -0.1, &[]), "--ffn -0.1 is outside [0, 1)"),
            (spec(0.0, 0.0, &["decoder.1"]), "has 1 layers"),
            (spec(0.0, 0.0, &["decoder.0"]), "every decoder layer"),
        ] {
            let err = plan_err(spec);
            assert!(err.contains(message), "{err}");
        }
        for text in ["decoder", "middle.0", "encoder.x"] {
            assert!(text.parse::<LayerRef>().is_err(), "{text}");
        }
        assert_eq!(
            "decoder.3".parse::<LayerRef>().unwrap().to_string(),
            "decoder.3"
        );
    }
}
