//! `paragen pipeline`: the quick start (prepare, train the teacher, evaluate).

use anyhow::Context;
use paragen_backend::{DeviceSpec, run_on};

use crate::args::{EvalArgs, PipelineArgs, PrepareArgs, RunOverrides, TrainArgs, defaults};

pub fn pipeline(spec: DeviceSpec, args: &PipelineArgs) -> anyhow::Result<()> {
    let data_dir = args.work.join("data");
    let teacher_dir = args.work.join("teacher");
    if args.force || !data_dir.join("prepare.json").exists() {
        super::prepare::prepare(&PrepareArgs {
            corpus: args.corpus.clone(),
            out: data_dir.clone(),
            ..defaults()
        })?;
    } else {
        outln!("using prepared data in {}", data_dir.display())?;
    }
    if args.force && teacher_dir.exists() {
        std::fs::remove_dir_all(&teacher_dir)
            .with_context(|| format!("removing {}", teacher_dir.display()))?;
    }
    if !teacher_dir.join("model.mpk").exists() {
        let resume = teacher_dir.join("run.json").exists();
        run_on(
            spec,
            super::train::TrainTeacher(TrainArgs {
                data: data_dir.clone(),
                out: teacher_dir.clone(),
                preset: args.preset,
                run: RunOverrides {
                    resume,
                    ..defaults()
                },
            }),
        )??;
    } else {
        outln!("using the trained teacher in {}", teacher_dir.display())?;
    }
    run_on(
        spec,
        super::eval::Eval(EvalArgs {
            model: teacher_dir,
            data: Some(data_dir),
            show: args.show,
            ..defaults()
        }),
    )?
}
