"""The sandbox's EC2 emulator: moto's own server with one fidelity fix.

Real EC2 gives an image made from an EBS-backed instance, and any copy of it,
the root device type "ebs". moto 5.2 (5.2.1 to 5.2.5) leaves every created or
copied image at the default, "standard". Packer's amazon-ebs builder refuses
such an image as a source, so without this fix no build could start from an
image the factory made (build-amis --spark-on-base). The sandbox's source
images, and so its instances, are all EBS-backed.

Run it as moto_server: python3 moto_server.py -H 127.0.0.1 -p PORT
"""

import sys

from moto.ec2.models import amis, ec2_backends
from moto.server import main

_create_image = amis.AmiBackend.create_image
_copy_image = amis.AmiBackend.copy_image


def create_image(self, *args, **kwargs):
    image = _create_image(self, *args, **kwargs)
    image.root_device_type = "ebs"
    return image


def copy_image(self, source_image_id, source_region, *args, **kwargs):
    image = _copy_image(self, source_image_id, source_region, *args, **kwargs)
    source_backend = ec2_backends[self.account_id][source_region]
    image.root_device_type = source_backend.describe_images(ami_ids=[source_image_id])[0].root_device_type
    return image


amis.AmiBackend.create_image = create_image
amis.AmiBackend.copy_image = copy_image

if __name__ == "__main__":
    sys.exit(main())
