// Creates the secured broker's topics and ACLs with Kafka's own Admin client (the jars the
// broker runs from), as the super user. Compiled and run by infra/secure.sh:
//   java -cp 'LIBS/*:CLASSES' Provision ADMIN_PROPERTIES SPEC
// SPEC lines: "topic NAME PARTITIONS" or "acl PRINCIPAL TOPIC|GROUP LITERAL|PREFIXED NAME OPERATION".
// Safe to run again: existing topics and ACLs are left as they are.

import java.io.FileInputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

public class Provision {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        try (FileInputStream in = new FileInputStream(args[0])) {
            props.load(in);
        }
        List<NewTopic> topics = new ArrayList<>();
        List<AclBinding> acls = new ArrayList<>();
        for (String raw : Files.readAllLines(Path.of(args[1]))) {
            String line = raw.strip();
            if (line.isEmpty() || line.startsWith("#")) continue;
            String[] f = line.split("\\s+");
            if (f[0].equals("topic") && f.length == 3) {
                topics.add(new NewTopic(f[1], Integer.parseInt(f[2]), (short) 1));
            } else if (f[0].equals("acl") && f.length == 6) {
                ResourcePattern resource = new ResourcePattern(
                        ResourceType.valueOf(f[2]), f[4], PatternType.valueOf(f[3]));
                AccessControlEntry entry = new AccessControlEntry(
                        f[1], "*", AclOperation.valueOf(f[5]), AclPermissionType.ALLOW);
                acls.add(new AclBinding(resource, entry));
            } else {
                throw new IllegalArgumentException("bad spec line: " + line);
            }
        }
        try (Admin admin = Admin.create(props)) {
            for (var result : admin.createTopics(topics).values().entrySet()) {
                try {
                    result.getValue().get(60, TimeUnit.SECONDS);
                } catch (ExecutionException e) {
                    if (!(e.getCause() instanceof TopicExistsException)) throw e;
                }
            }
            admin.createAcls(acls).all().get(60, TimeUnit.SECONDS);
        }
        System.out.println("provisioned " + topics.size() + " topics and " + acls.size() + " ACLs");
    }
}
