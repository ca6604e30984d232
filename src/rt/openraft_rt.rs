//! openraft's [`AsyncRuntime`] implemented over the seam, so that raft's timers, tasks, channels and
//! randomness all come from `tokio` (real or madsim) and a seed reproduces a run.

use std::fmt;
use std::future::Future;
use std::io;
use std::ops::{Add, AddAssign, Sub, SubAssign};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use openraft::async_runtime::{
    Mpsc, MpscReceiver, MpscSender, MpscWeakSender, Oneshot, OneshotSender, SendError, TryRecvError,
};
use openraft::{AsyncRuntime, OptionalSend};
use tokio::sync::{mpsc, oneshot};

use super::watch::SeamWatch;

/// The runtime openraft runs on: tokio in production, madsim in simulation.
pub struct SeamRuntime {
    #[cfg(not(madsim))]
    rt: tokio::runtime::Runtime,
    #[cfg(madsim)]
    rt: madsim::runtime::Runtime,
}

/// openraft's instant: a thin wrapper over the seam's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeamInstant(tokio::time::Instant);

impl Add<Duration> for SeamInstant {
    type Output = Self;
    fn add(self, rhs: Duration) -> Self {
        Self(self.0 + rhs)
    }
}

impl AddAssign<Duration> for SeamInstant {
    fn add_assign(&mut self, rhs: Duration) {
        self.0 += rhs;
    }
}

impl Sub<Duration> for SeamInstant {
    type Output = Self;
    fn sub(self, rhs: Duration) -> Self {
        Self(self.0 - rhs)
    }
}

impl Sub<SeamInstant> for SeamInstant {
    type Output = Duration;
    fn sub(self, rhs: SeamInstant) -> Duration {
        self.0.saturating_duration_since(rhs.0)
    }
}

impl SubAssign<Duration> for SeamInstant {
    fn sub_assign(&mut self, rhs: Duration) {
        self.0 -= rhs;
    }
}

impl openraft::Instant for SeamInstant {
    fn now() -> Self {
        Self(tokio::time::Instant::now())
    }
}

/// A deadline around a future. Our own type because madsim's timeout future cannot be named in the
/// trait's associated type.
pub struct SeamTimeout<F> {
    future: Pin<Box<F>>,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

/// The error of [`SeamTimeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("deadline has elapsed")]
pub struct SeamTimeoutError;

impl<F: Future> Future for SeamTimeout<F> {
    type Output = Result<F::Output, SeamTimeoutError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The future goes first (biased), so work that is ready exactly at the deadline still wins.
        if let Poll::Ready(v) = self.future.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(SeamTimeoutError)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Random numbers for openraft (election jitter). In simulation seeded from madsim's RNG.
pub struct SeamRng(rand::rngs::SmallRng);

impl rand::TryRng for SeamRng {
    type Error = std::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        self.0.try_next_u32()
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        self.0.try_next_u64()
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        self.0.try_fill_bytes(dst)
    }
}

impl AsyncRuntime for SeamRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = tokio::task::JoinHandle<T>;
    type Sleep = tokio::time::Sleep;
    type Instant = SeamInstant;
    type TimeoutError = SeamTimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = SeamTimeout<T>;
    type ThreadLocalRng = SeamRng;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        tokio::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        tokio::time::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        tokio::time::sleep_until(deadline.0)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        SeamTimeout {
            future: Box::pin(future),
            sleep: Box::pin(tokio::time::sleep(duration)),
        }
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        SeamTimeout {
            future: Box::pin(future),
            sleep: Box::pin(tokio::time::sleep_until(deadline.0)),
        }
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        use rand::SeedableRng;
        SeamRng(rand::rngs::SmallRng::seed_from_u64(super::random_u64()))
    }

    type Mpsc = SeamMpsc;
    type Watch = SeamWatch;
    type Oneshot = SeamOneshot;
    type Mutex<T: OptionalSend + 'static> = SeamMutex<T>;

    fn new(threads: usize) -> Self {
        #[cfg(not(madsim))]
        {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads.max(1))
                .enable_all()
                .build()
                .unwrap_or_else(|e| panic!("cannot build a tokio runtime: {e}"));
            SeamRuntime { rt }
        }
        #[cfg(madsim)]
        {
            let _ = threads;
            SeamRuntime {
                rt: madsim::runtime::Runtime::new(),
            }
        }
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.rt.block_on(future)
    }

    fn spawn_blocking<F, T>(f: F) -> impl Future<Output = Result<T, io::Error>> + Send
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        super::spawn_blocking(f)
    }
}

// ------------------------------------------------------------------------------------------ mpsc

/// Bounded mpsc over `tokio::sync::mpsc` (deterministic: it draws no randomness).
pub struct SeamMpsc;

/// Sending half of [`SeamMpsc`].
pub struct SeamMpscSender<T>(mpsc::Sender<T>);
/// Receiving half of [`SeamMpsc`].
pub struct SeamMpscReceiver<T>(mpsc::Receiver<T>);
/// Weak sending half of [`SeamMpsc`].
pub struct SeamMpscWeakSender<T>(mpsc::WeakSender<T>);

impl<T> Clone for SeamMpscSender<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> Clone for SeamMpscWeakSender<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl Mpsc for SeamMpsc {
    type Sender<T: OptionalSend> = SeamMpscSender<T>;
    type Receiver<T: OptionalSend> = SeamMpscReceiver<T>;
    type WeakSender<T: OptionalSend> = SeamMpscWeakSender<T>;

    fn channel<T: OptionalSend>(buffer: usize) -> (Self::Sender<T>, Self::Receiver<T>) {
        let (tx, rx) = mpsc::channel(buffer);
        (SeamMpscSender(tx), SeamMpscReceiver(rx))
    }
}

impl<T: OptionalSend> MpscSender<SeamMpsc, T> for SeamMpscSender<T> {
    fn send(&self, msg: T) -> impl Future<Output = Result<(), SendError<T>>> + OptionalSend {
        let tx = self.0.clone();
        async move { tx.send(msg).await.map_err(|e| SendError(e.0)) }
    }

    fn downgrade(&self) -> SeamMpscWeakSender<T> {
        SeamMpscWeakSender(self.0.downgrade())
    }
}

impl<T: OptionalSend> MpscReceiver<T> for SeamMpscReceiver<T> {
    fn recv(&mut self) -> impl Future<Output = Option<T>> + OptionalSend {
        self.0.recv()
    }

    fn try_recv(&mut self) -> Result<T, TryRecvError> {
        self.0.try_recv().map_err(|e| match e {
            mpsc::error::TryRecvError::Empty => TryRecvError::Empty,
            mpsc::error::TryRecvError::Disconnected => TryRecvError::Disconnected,
        })
    }
}

impl<T: OptionalSend> MpscWeakSender<SeamMpsc, T> for SeamMpscWeakSender<T> {
    fn upgrade(&self) -> Option<SeamMpscSender<T>> {
        self.0.upgrade().map(SeamMpscSender)
    }
}

// --------------------------------------------------------------------------------------- oneshot

/// Oneshot over `tokio::sync::oneshot`.
pub struct SeamOneshot;

/// Sending half of [`SeamOneshot`].
pub struct SeamOneshotSender<T>(oneshot::Sender<T>);

impl Oneshot for SeamOneshot {
    type Sender<T: OptionalSend> = SeamOneshotSender<T>;
    type Receiver<T: OptionalSend> = oneshot::Receiver<T>;
    type ReceiverError = oneshot::error::RecvError;

    fn channel<T: OptionalSend>() -> (Self::Sender<T>, Self::Receiver<T>) {
        let (tx, rx) = oneshot::channel();
        (SeamOneshotSender(tx), rx)
    }
}

impl<T: OptionalSend> OneshotSender<T> for SeamOneshotSender<T> {
    fn send(self, t: T) -> Result<(), T> {
        self.0.send(t)
    }
}

// ----------------------------------------------------------------------------------------- mutex

/// Async mutex over `tokio::sync::Mutex`.
pub struct SeamMutex<T>(tokio::sync::Mutex<T>);

impl<T: OptionalSend + 'static> openraft::async_runtime::Mutex<T> for SeamMutex<T> {
    type Guard<'a>
        = tokio::sync::MutexGuard<'a, T>
    where
        Self: 'a;

    fn new(value: T) -> Self {
        Self(tokio::sync::Mutex::new(value))
    }

    fn lock(&self) -> impl Future<Output = Self::Guard<'_>> + OptionalSend {
        self.0.lock()
    }
}

impl fmt::Debug for SeamRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SeamRuntime")
    }
}

impl fmt::Debug for SeamRng {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SeamRng")
    }
}
