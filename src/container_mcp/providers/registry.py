"""The one place that names the backends: provider name -> factory."""

from __future__ import annotations

from collections.abc import Callable

from ..clock import Clock, system_clock
from ..settings import Settings
from .base import Provider

__all__ = ["PROVIDERS", "create_provider"]


def _local(settings: Settings, clock: Clock) -> Provider:
    from ..sandbox import Sandbox, SandboxConfig
    from .local import LocalProvider
    from .local_exec import ExecLimits

    return LocalProvider(
        settings.data_dir / "local",
        clock=clock,
        reaper_interval_s=settings.reaper_interval_s,
        exec_limits=ExecLimits(
            pids_limit=settings.exec_pids_limit,
            cpu_seconds=settings.exec_cpu_seconds,
            max_file_bytes=settings.max_file_bytes,
            max_output_bytes=settings.exec_max_output_bytes,
            max_stage_files=2 * settings.max_files_per_container,
            max_stage_bytes=settings.max_session_bytes,
            max_home_bytes=settings.exec_home_max_bytes,
            max_home_files=settings.exec_home_max_files,
            max_processes_per_container=settings.exec_max_processes_per_container,
            max_processes_per_session=settings.exec_max_processes_per_session,
            process_max_lifetime_s=settings.exec_process_max_lifetime_s,
            process_max_output_bytes=settings.exec_process_max_output_bytes,
        ),
        sandbox=Sandbox(
            SandboxConfig(
                egress=settings.egress_rules(), sandbox_uid=settings.sandbox_uid, sandbox_gid=settings.sandbox_gid
            )
        ),
    )


def _openai(settings: Settings, clock: Clock) -> Provider:
    from .openai import OpenAIProvider

    return OpenAIProvider.from_settings(settings)


def _docker(settings: Settings, clock: Clock) -> Provider:
    from .docker import DockerProvider
    from .docker_api import Engine
    from .docker_exec import ExecLimits

    return DockerProvider(
        settings.data_dir / "docker",
        engine=Engine(settings.docker_host, options=settings.docker_engine_options()),
        image=settings.docker_image,
        images=settings.docker_images,
        user=settings.docker_user,
        limits=ExecLimits(
            pids_limit=settings.exec_pids_limit,
            cpus=settings.docker_cpus,
            max_output_bytes=settings.exec_max_output_bytes,
            max_processes_per_container=settings.exec_max_processes_per_container,
            max_processes_per_session=settings.exec_max_processes_per_session,
            process_max_lifetime_s=settings.exec_process_max_lifetime_s,
            process_max_output_bytes=settings.exec_process_max_output_bytes,
        ),
        clock=clock,
        reaper_interval_s=settings.reaper_interval_s,
    )


PROVIDERS: dict[str, Callable[[Settings, Clock], Provider]] = {"local": _local, "openai": _openai, "docker": _docker}


def create_provider(settings: Settings, clock: Clock = system_clock) -> Provider:
    """A new, not yet entered provider for ``settings.provider``."""
    return PROVIDERS[settings.provider](settings, clock)
