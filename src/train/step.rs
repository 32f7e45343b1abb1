//! One training step, d2l's `train_epoch_ch8` body: state (carried or fresh) ->
//! forward and backward -> clip by the global norm -> update. Run eagerly, or on
//! CUDA as one replayed CUDA graph.
//!
//! On a GPU a small GRU's step is hundreds of kernels of a few microseconds each,
//! and launching them costs more than running them. A CUDA graph records the
//! whole step once (forward, hand-written or autograd backward, clipping, SGD)
//! and replays it with one launch. What makes that possible: nothing in a step
//! reads a value back to the host (clipping and SGD stay on the device, see
//! `optim.rs`), and parameters, gradients and optimiser state are updated in
//! place, so their addresses never change. Inputs go into static buffers that
//! the graph reads; the state is carried in a static buffer the graph rewrites;
//! loss and gradient norm come out in static buffers, copied after each replay.
//!
//! The first [`WARMUP_STEPS`] steps run eagerly on the side stream the graph is
//! captured on (lazy allocations: gradients, cuBLAS/cuDNN workspaces), then step
//! `WARMUP_STEPS + 1` is captured and every step replays it. They are real
//! training steps: capture changes no number, replay runs the same kernels.
//! Adam is not captured (its bias correction is computed on the host per step),
//! and if a capture fails grulm says why and goes on eagerly.
use crate::model::{RecurrentLm, State};
use crate::platform::cuda::{Graph, SideStream};
use crate::train::optim::Optimizer;
use anyhow::Result;
use tch::{Device, Tensor};

/// Eager steps before the capture.
pub(crate) const WARMUP_STEPS: usize = 2;

/// A step's device-side results: the loss (mean cross-entropy per token) and the
/// global gradient norm before clipping, both 0-d.
pub(crate) struct StepOut {
    pub loss: Tensor,
    pub norm: Tensor,
}

/// The captured step and its static buffers.
struct Captured {
    graph: Graph,
    /// Token ids and targets `[B, T]` the graph reads.
    x: Tensor,
    y: Tensor,
    /// The state the graph starts from and writes its final state into.
    state: State,
    loss: Tensor,
    norm: Tensor,
}

/// Runs training steps, carrying the recurrent state between them.
pub(crate) struct Stepper {
    device: Device,
    /// The eagerly carried state (None: start fresh).
    state: Option<State>,
    /// Dropped before the side stream it was captured on.
    captured: Option<Captured>,
    /// Present while CUDA graphs are in use (warming up or captured).
    side: Option<SideStream>,
    warm: usize,
    /// Why the steps run eagerly on CUDA, when graphs were asked for.
    note: Option<String>,
}

impl Stepper {
    /// `cuda_graph`: capture the step on CUDA when possible (train.cuda_graph).
    pub fn new(device: Device, cuda_graph: bool, opt: &Optimizer) -> Stepper {
        let mut s = Stepper { device, state: None, captured: None, side: None, warm: 0, note: None };
        if !(cuda_graph && device.is_cuda()) {
            return s;
        }
        if !crate::platform::cuda::shim_built() {
            s.note = Some(format!("CUDA graphs off: grulm's CUDA shim was {}", crate::platform::cuda::shim_status()));
        } else if !opt.graph_safe() {
            s.note = Some("CUDA graphs off: Adam computes its bias correction on the host every step; steps run eagerly".into());
        } else {
            match SideStream::enter(device) {
                Ok(side) => s.side = Some(side),
                Err(e) => s.note = Some(format!("CUDA graphs off: {e:#}")),
            }
        }
        s
    }

    /// How steps run: `CUDA graph`, `CUDA graph (warming up)` or `eager`.
    pub(crate) fn describe(&self) -> &'static str {
        match (&self.captured, &self.side) {
            (Some(_), _) => "CUDA graph",
            (None, Some(_)) => "CUDA graph (after warm-up)",
            (None, None) => "eager",
        }
    }

    /// Launches per step replayed from the graph, once captured.
    pub fn graph_nodes(&self) -> Option<usize> {
        self.captured.as_ref().and_then(|c| c.graph.node_count())
    }

    /// Why graphs were asked for and not used (taken once, for printing).
    pub(crate) fn take_note(&mut self) -> Option<String> {
        self.note.take()
    }

    /// The state the next minibatch would start from (None: a fresh one).
    pub(crate) fn carried(&self) -> Option<State> {
        match &self.captured {
            Some(c) => Some(State(c.state.0.iter().map(Tensor::copy).collect())),
            None => self.state.as_ref().map(|s| State(s.0.iter().map(Tensor::copy).collect())),
        }
    }

    /// Carries `state` into the next minibatch (resuming an interrupted epoch).
    pub(crate) fn set_carried(&mut self, state: State) {
        self.state = Some(state);
    }

    /// One training step on `x`, `y` (`[B, T]`), from a zero state when `fresh`
    /// (the random partition, or an epoch's first minibatch), else from the state
    /// the previous step left.
    pub fn step(
        &mut self,
        model: &dyn RecurrentLm,
        opt: &mut Optimizer,
        x: &Tensor,
        y: &Tensor,
        fresh: bool,
        theta: f64,
    ) -> Result<StepOut> {
        if self.captured.is_none() && self.side.is_some() && self.warm >= WARMUP_STEPS {
            if let Err(e) = self.capture(model, opt, x, y, fresh, theta) {
                self.note = Some(format!("CUDA graphs off: capturing the training step failed ({e:#}); steps run eagerly"));
                self.side = None; // synchronises and leaves the side stream
            }
        }
        if let Some(c) = &mut self.captured {
            c.x.copy_(x);
            c.y.copy_(y);
            if fresh {
                for s in &c.state.0 {
                    let _ = s.shallow_clone().zero_();
                }
            }
            c.graph.replay()?;
            return Ok(StepOut { loss: c.loss.copy(), norm: c.norm.copy() });
        }
        let state = match (fresh, self.state.take()) {
            (false, Some(s)) => s,
            _ => model.zero_state(x.size()[0]),
        };
        let (loss, norm, new_state) = Self::eager(model, opt, x, y, &state, theta);
        self.state = Some(new_state);
        self.warm += 1;
        Ok(StepOut { loss, norm })
    }

    fn eager(model: &dyn RecurrentLm, opt: &mut Optimizer, x: &Tensor, y: &Tensor, state: &State, theta: f64) -> (Tensor, Tensor, State) {
        opt.zero_grad();
        let (loss, new_state) = model.train_step(x, y, state);
        let norm = opt.clip_grad_norm(theta);
        opt.step();
        (loss, norm, new_state)
    }

    /// Records one step reading static buffers; the step itself runs at the
    /// first replay.
    fn capture(&mut self, model: &dyn RecurrentLm, opt: &mut Optimizer, x: &Tensor, y: &Tensor, fresh: bool, theta: f64) -> Result<()> {
        let carried = self.state.take();
        let state = match (fresh, &carried) {
            (false, Some(s)) => State(s.0.iter().map(Tensor::copy).collect()),
            _ => model.zero_state(x.size()[0]),
        };
        let (sx, sy) = (x.copy(), y.copy());
        let result = Graph::capture(self.device, || {
            let (loss, norm, new_state) = Self::eager(model, opt, &sx, &sy, &state, theta);
            for (dst, src) in state.0.iter().zip(&new_state.0) {
                dst.shallow_clone().copy_(src);
            }
            Ok((loss, norm))
        });
        match result {
            Ok((graph, (loss, norm))) => {
                self.captured = Some(Captured { graph, x: sx, y: sy, state, loss, norm });
                Ok(())
            }
            Err(e) => {
                self.state = carried;
                Err(e)
            }
        }
    }
}
