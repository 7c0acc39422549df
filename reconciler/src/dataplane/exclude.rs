//! Cgroup subtrees whose processes the programs never translate (`dataplane.exclude`,
//! `apply --exclude-cgroup`): a service-mesh sidecar that does its own balancing, a VM
//! runtime. Each is written to `EXCLUDED` as its root's cgroup ID and depth below the
//! cgroup2 root; a process is in the subtree when its ancestor at that depth is the root
//! (`bpf_get_current_ancestor_cgroup_id`), so moving processes in and out needs no write.
use std::path::{Path, PathBuf};

use reconciler_common::{ExcludedCgroup, MAX_EXCLUDED};

use super::{
    error::{io_err, map_err, DataplaneError, Result},
    pins::{cgroup2_mounts, cgroup_id, lock},
    Dataplane,
};

impl Dataplane {
    /// Makes `EXCLUDED` hold exactly the subtrees rooted at `cgroups` (cgroup v2
    /// directories); returns whether it changed. Refuses more than `MAX_EXCLUDED`, writing
    /// nothing.
    pub fn exclude(&mut self, cgroups: &[PathBuf]) -> Result<bool> {
        if cgroups.len() > MAX_EXCLUDED as usize {
            return Err(DataplaneError::TooManyExcluded {
                count: cgroups.len(),
                max: MAX_EXCLUDED,
            });
        }
        let mounts = cgroup2_mounts()?;
        let mut wanted =
            cgroups.iter().map(|dir| entry(dir, &mounts)).collect::<Result<Vec<_>>>()?;
        wanted.resize(MAX_EXCLUDED as usize, ExcludedCgroup::default());
        // Under the apply's lock: a daemon's run and an `apply --exclude-cgroup` take turns.
        let _lock = lock(&self.pin_path)?;
        let current = self.excluded_entries()?;
        if current == wanted {
            return Ok(false);
        }
        // Not versioned: the list changes with the node's configuration, rarely, and a connect
        // made while it changes is decided by the old entries or the new.
        for (index, entry) in wanted.iter().enumerate() {
            if current.get(index) != Some(entry) {
                self.excluded.set(index as u32, entry, 0).map_err(map_err("writing EXCLUDED"))?;
            }
        }
        Ok(true)
    }

    /// The excluded subtrees, as written (up to the first empty entry).
    pub fn excluded(&self) -> Result<Vec<ExcludedCgroup>> {
        let entries = self.excluded_entries()?;
        Ok(entries.into_iter().take_while(|entry| entry.cgroup_id != 0).collect())
    }

    fn excluded_entries(&self) -> Result<Vec<ExcludedCgroup>> {
        (0..MAX_EXCLUDED)
            .map(|index| self.excluded.get(&index, 0).map_err(map_err("reading EXCLUDED")))
            .collect()
    }
}

/// The `EXCLUDED` entry of the subtree rooted at `dir`.
fn entry(dir: &Path, mounts: &[PathBuf]) -> Result<ExcludedCgroup> {
    Ok(ExcludedCgroup { cgroup_id: cgroup_id(dir)?, level: level(dir, mounts)?, _pad: 0 })
}

/// How deep `dir` lies below the root of its cgroup2 mount, one of `mounts` (the root is 0).
fn level(dir: &Path, mounts: &[PathBuf]) -> Result<u32> {
    let real = dir.canonicalize().map_err(io_err(format!("resolving {}", dir.display())))?;
    let mount = mounts
        .iter()
        .filter(|mount| real.starts_with(mount))
        .max_by_key(|mount| mount.components().count())
        .ok_or_else(|| DataplaneError::NotCgroup2 { path: dir.to_owned() })?;
    Ok((real.components().count() - mount.components().count()) as u32)
}
