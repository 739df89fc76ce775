//! Cooperative shutdown: one cancellation token observed by every long-lived task and
//! one tracker that `run` waits on, passed in explicitly (never a global).

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Shared by every background task of one server instance.
#[derive(Clone, Default)]
pub struct Shutdown {
    /// Cancelled when the server must stop; tasks finish their current unit of work.
    pub token: CancellationToken,
    /// Tracks background tasks so that `run` returns only after they ended.
    pub tracker: TaskTracker,
}

impl Shutdown {
    /// Spawns a tracked task.
    pub fn spawn<F>(&self, future: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(future);
    }

    /// Runs a tracked closure on a thread that may block, for as long as it runs.
    pub fn spawn_blocking<F>(&self, work: F)
    where
        F: FnOnce() + Send + 'static,
    {
        self.tracker.spawn_blocking(work);
    }

    /// Resolves when shutdown has been requested.
    pub async fn requested(&self) {
        self.token.cancelled().await
    }

    /// Whether shutdown has been requested.
    pub fn is_requested(&self) -> bool {
        self.token.is_cancelled()
    }
}
