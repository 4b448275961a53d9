//! The one way the workspace takes its locks. Every lock guards state that each critical
//! section leaves consistent (counters, maps, a last error, a log of items), and none runs
//! user code while held, so a panic elsewhere that poisoned a lock left nothing half-done:
//! the guard is taken back (`PoisonError::into_inner`) instead of spreading the panic to
//! every later caller of the cache.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Lock `m`, through any poisoning.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Read-lock `l`, through any poisoning.
pub fn read<T: ?Sized>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

/// Write-lock `l`, through any poisoning.
pub fn write<T: ?Sized>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}
